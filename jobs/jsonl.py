"""One JSON object per line, safe for any line splitter.

json.dumps(ensure_ascii=False) keeps U+0085, U+2028 and U+2029 raw; they are valid
inside JSON strings, but Python's str.splitlines() and JavaScript readers break lines
on them, so a model that emits one would split its output line in two.
"""

import json

_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def dumps_line(obj):
    return json.dumps(obj, ensure_ascii=False).translate(_LINE_BREAKS)
