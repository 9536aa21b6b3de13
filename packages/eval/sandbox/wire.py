"""loralab sandbox wire: the values a check's calls carry between the trusted checker and the
untrusted candidate process (checker.py and candidate.py both use it).

One line per message: JSON made only of lists, small ints and ASCII strings of letters,
digits and "+-." (parse() reads exactly that and nothing else). A value is a tagged list built from Python's own types only: bool stays
bool, tuple stays tuple, a float keeps its exact bits (float.hex: inf, nan and -0.0 too), an
int any size and a str any code points (both as hex: exempt from the int-digits limit, no
escaping). decode() is the trusted side's: it accepts exactly those shapes and nothing else, so
nothing the candidate sends can carry code, a custom __eq__, or a type the checker's asserts
would not compare honestly. encode() converts what an honest function returns (subclasses of
the builtins, numpy's scalars, iterators) to those shapes and refuses the rest.

No imports beyond os: both sides start on every execution, and json (with re) would cost each
~10 ms of CPU.
"""
import os

MAX_LINE = 64 << 20  # bytes per message: more is a failure, not a wait
MAX_DEPTH = 100  # nesting of a value
HEX = frozenset("0123456789abcdef")
WORD = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.+-")


class WireError(Exception):
    """A message that is not one the protocol allows."""


def _hex_str(s):
    return '"' + s.encode("utf-8", "surrogatepass").hex() + '"'


def _seq(tag, items, depth):
    return f'["{tag}",[' + ",".join(encode(v, depth) for v in items) + "]]"


def encode(x, depth=0):
    """The value as wire text."""
    if depth > MAX_DEPTH:
        raise WireError(f"value nested deeper than {MAX_DEPTH}")
    d = depth + 1
    if x is None:
        return '["n"]'
    if isinstance(x, bool):
        return '["b",1]' if x else '["b",0]'
    if isinstance(x, int):
        return f'["i","{int.__index__(x):x}"]'
    if isinstance(x, float):
        return f'["f","{float.hex(x)}"]'
    if isinstance(x, complex):
        return f'["c","{float.hex(complex.real.__get__(x))}","{float.hex(complex.imag.__get__(x))}"]'
    if isinstance(x, str):
        return '["s",' + _hex_str(str.__str__(x)) + "]"
    if isinstance(x, (bytes, bytearray)):
        return ('["y","' if isinstance(x, bytes) else '["Y","') + bytes(x).hex() + '"]'
    if isinstance(x, list):
        return _seq("l", list.__iter__(x), d)
    if isinstance(x, tuple):
        return _seq("t", tuple.__iter__(x), d)
    if isinstance(x, frozenset):
        return _seq("F", frozenset.__iter__(x), d)
    if isinstance(x, set):
        return _seq("S", set.__iter__(x), d)
    if isinstance(x, dict):
        return '["d",[' + ",".join(f"[{encode(k, d)},{encode(v, d)}]" for k, v in dict.items(x)) + "]]"
    if isinstance(x, range):
        return f'["r",{encode(x.start, d)},{encode(x.stop, d)},{encode(x.step, d)}]'
    import numbers  # only for the rare value that is none of the above

    if isinstance(x, numbers.Integral):  # numpy's integers
        return encode(int(x), depth)
    if isinstance(x, numbers.Real):  # numpy's floats
        return encode(float(x), depth)
    if hasattr(type(x), "__next__") and iter(x) is x:  # map, filter, a generator: what list() of it would see
        return _seq("it", x, d)
    raise WireError(f"a {type(x).__name__} cannot cross the sandbox (only Python's builtin values do)")


def _str(v, limit=None):
    if type(v) is not str or (limit is not None and len(v) > limit):
        raise WireError("malformed value")
    return v


def _hex(v):
    s = _str(v)
    if not s or not HEX.issuperset(s):
        raise WireError("malformed hex")
    return s


def _items(v):
    if type(v) is not list:
        raise WireError("malformed value")
    return v


def decode(node, depth=0):
    """The value of a parsed wire value; WireError for anything else."""
    if depth > MAX_DEPTH + 1:
        raise WireError(f"value nested deeper than {MAX_DEPTH}")
    if type(node) is not list or not node or type(node[0]) is not str:
        raise WireError("malformed value")
    tag, n, d = node[0], len(node), depth + 1
    if tag == "n" and n == 1:
        return None
    if tag == "b" and n == 2 and type(node[1]) is int and node[1] in (0, 1):
        return node[1] == 1
    if tag == "i" and n == 2:
        s = _str(node[1])
        return -int(_hex(s[1:]), 16) if s.startswith("-") else int(_hex(s), 16)
    if tag == "f" and n == 2:
        return float.fromhex(_str(node[1], 64))
    if tag == "c" and n == 3:
        return complex(float.fromhex(_str(node[1], 64)), float.fromhex(_str(node[2], 64)))
    if tag == "s" and n == 2:
        s = _str(node[1])
        return bytes.fromhex(_hex(s) if s else "").decode("utf-8", "surrogatepass")
    if tag in ("y", "Y") and n == 2:
        s = _str(node[1])
        b = bytes.fromhex(_hex(s) if s else "")
        return b if tag == "y" else bytearray(b)
    if tag in ("l", "t", "S", "F", "it") and n == 2:
        items = [decode(v, d) for v in _items(node[1])]
        return {"l": list, "t": tuple, "S": set, "F": frozenset, "it": iter}[tag](items)
    if tag == "d" and n == 2:
        out = {}
        for kv in _items(node[1]):
            if type(kv) is not list or len(kv) != 2:
                raise WireError("malformed dict")
            out[decode(kv[0], d)] = decode(kv[1], d)
        return out
    if tag == "r" and n == 4:
        parts = [decode(v, d) for v in node[1:]]
        if any(type(p) is not int for p in parts):
            raise WireError("malformed range")
        return range(*parts)
    raise WireError(f"unknown value tag {tag[:20]!r}")


def parse(line):
    """A message line as nested lists of strings and small ints; WireError for anything else.
    The grammar admits no escapes, so splitting on the brackets and commas is exact."""
    try:
        tokens = line.decode("ascii").replace("[", " [ ").replace("]", " ] ").replace(",", " , ").split()
    except (AttributeError, UnicodeDecodeError):
        raise WireError("a message that is not ASCII text") from None
    stack, top, want = [], None, "value"  # want: "value", "first" (a value or "]"), "sep" ("," or "]")
    for t in tokens:
        if top is not None:
            raise WireError("text after a message")
        if t == "[":
            if want == "sep" or len(stack) > 2 * MAX_DEPTH + 8:
                raise WireError("malformed message")
            stack.append([])
            want = "first"
            continue
        if t == ",":
            if want != "sep" or not stack:
                raise WireError("malformed message")
            want = "value"
            continue
        if t == "]":
            if want == "value" or not stack:
                raise WireError("malformed message")
            done = stack.pop()
        elif want == "sep":
            raise WireError("malformed message")
        elif len(t) >= 2 and t[0] == '"' == t[-1] and WORD.issuperset(t[1:-1]):
            done = t[1:-1]
        elif t.isdigit() and len(t) <= 3:
            done = int(t)
        else:
            raise WireError("malformed message")
        if stack:
            stack[-1].append(done)
        else:
            top = done
        want = "sep"
    if top is None:
        raise WireError("malformed message")
    return top


def send(fd, text):
    view = memoryview(text.encode("ascii") + b"\n")
    while view:
        view = view[os.write(fd, view) :]


class Lines:
    """Message lines from a file descriptor; None at end of file."""

    def __init__(self, fd):
        self.fd, self.buf = fd, bytearray()

    def next(self):
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[: i + 1]
                return line
            if len(self.buf) > MAX_LINE:
                raise WireError(f"a message longer than {MAX_LINE} bytes")
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                if self.buf:
                    raise WireError("a message cut short")
                return None
            self.buf += chunk
