"""loralab sandbox checker: the trusted side of a check. init.py forks it, confines it as its
own uid (not the candidate's: the candidate can neither signal nor trace it, nor read its
memory) and calls run(). It runs the problem's test code (and its prompt, when the test uses
the prompt's helpers) in its own interpreter, where `candidate` is a proxy: each call goes to
the candidate process as values (wire.py) and comes back as values, so every assert compares
Python's own objects in a process the candidate cannot reach. Its verdict is its exit status,
which only init (its parent) sees.
"""
import builtins, sys

import wire


class CandidateError(Exception):
    """The candidate raised, answered with something that is not a value, or went away."""


class Candidate:
    def __init__(self, name, calls_fd, answers):
        self.name, self.calls_fd, self.answers = name, calls_fd, answers

    def __call__(self, *args, **kwargs):
        e = wire.encode
        request = f'["call",{e(self.name)},[{",".join(e(a) for a in args)}],[{",".join(f"[{e(k)},{e(v)}]" for k, v in kwargs.items())}]]'
        try:
            wire.send(self.calls_fd, request)
            msg = parse(self.answers.next())
        except (OSError, wire.WireError) as err:
            raise CandidateError(f"the candidate's process did not answer: {err}") from None
        if msg is None:
            raise CandidateError("the candidate's process ended without answering")
        try:
            if type(msg) is list and len(msg) == 2 and msg[0] == "ret":
                return wire.decode(msg[1])
            if type(msg) is list and len(msg) == 2 and msg[0] == "err":
                raise CandidateError(str(wire.decode(msg[1]))[:2000])
        except CandidateError:
            raise
        except Exception as err:  # noqa: BLE001 - unhashable keys, bad hex, depth: all "not a value"
            raise CandidateError(f"the candidate answered with something that is not a value: {err}") from None
        raise CandidateError("the candidate's answer is not one the protocol allows")


def parse(line):
    return None if line is None else wire.parse(line)


def names(code):
    """Every name the code (and the functions in it) may look up globally, and then some."""
    out = set(code.co_names)
    for c in code.co_consts:
        if type(c) is type(code):
            out |= names(c)
    return out


def run(job, calls_fd, answers_fd):
    """True when the candidate's top level ended and, for a check, check(candidate) returned."""
    answers = wire.Lines(answers_fd)
    try:
        ready = parse(answers.next())
    except (OSError, wire.WireError):
        ready = None
    if ready != ["ready"]:
        return False  # the program's own traceback, if any, is on stderr already
    check = job.get("check")
    if check is None:
        return True
    try:
        ns = {"__name__": "__main__", "__builtins__": builtins}
        prelude = compile(check["prelude"], "<prompt>", "exec")
        test = compile(check["test"], "<test>", "exec")
        if (set(prelude.co_names) - {check["entry_point"]}) & names(test):
            exec(prelude, ns)  # the test uses its helpers (poly, encode_cyclic, ...)
        proxy = Candidate(check["entry_point"], calls_fd, answers)
        ns[check["entry_point"]] = proxy  # a test may call the entry point by its name
        exec(test, ns)
        ns["check"](proxy)
    except BaseException:  # noqa: BLE001 - any way out of check() but returning is a failure
        sys.__excepthook__(*sys.exc_info())  # the interpreter's own printer: `traceback` costs ~15 ms to import
        return False
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return True
