"""OpenAI request bodies to engine arguments, and engine results to OpenAI bodies: plain Python,
shared by the web's checks, the batch runner and the realtime server."""
