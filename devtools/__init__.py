"""Development tooling, never imported by the product: the dev stack (web + worker
on this machine), the tiny model builder, and the dev settings with their commands."""
