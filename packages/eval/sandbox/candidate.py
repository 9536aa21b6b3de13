"""loralab sandbox candidate: the untrusted side. init.py execs `python3 -I -c` with this
file's code, already confined, with wire.py's loaded as the module `wire` (both compiled by
init: nothing has to be readable by the candidate's uid), the program's source on stdin, the
checker's calls on fd 3 and the answers' channel on fd 4. It runs the program as __main__, says "ready" when its top level
has ended, then answers each call of the entry point with the value it returned or the error.

Nothing here is trusted: the program shares this process and may rewrite all of it. That is
the design: the checker believes only values, and asserts on them in its own process.
"""
import os, sys, types

import wire

CALLS, ANSWERS = 3, 4
source = sys.stdin.buffer.read()  # and its stdin stays at end of file, as `python3 -` left it
for fd in (CALLS, ANSWERS):
    os.set_inheritable(fd, False)

main = types.ModuleType("__main__")
main.__builtins__ = __builtins__
sys.modules["__main__"] = main
exec(compile(source, "<program>", "exec"), main.__dict__)  # an exception here ends the process: no "ready"
del source

wire.send(ANSWERS, '["ready"]')
calls = wire.Lines(CALLS)
fn = None
while (line := calls.next()) is not None:
    try:
        _, name, args, kwargs = wire.parse(line)
        if fn is None:
            fn = main.__dict__[wire.decode(name)]  # once, as check(entry_point) binds it once
        answer = '["ret",' + wire.encode(fn(*[wire.decode(a) for a in args], **{wire.decode(k): wire.decode(v) for k, v in kwargs})) + "]"
    except Exception as e:  # noqa: BLE001 - the checker decides what an error means
        sys.__excepthook__(*sys.exc_info())
        answer = '["err",' + wire.encode(f"{type(e).__name__}: {e}"[:2000]) + "]"
    wire.send(ANSWERS, answer)
