# The harness that runs inside the sandbox, as PID 1 of its own PID namespace.
#
# Why a harness at all: starting /usr/bin/python3 costs ~16 ms, forking a warm
# interpreter ~1 ms. One sandbox per candidate runs this driver, which compiles
# the candidate once and forks one child per test. The child sets its own
# rlimits, gets fresh stdio, and runs the code as __main__.
#
# How it starts (grader/sandbox.ts): `python3 -I -S -c <boot>`, where <boot>
# reads this file's code object, marshalled once per grading process by the
# host's python3, together with `python3 -I`'s sys.path (SITE_PATH). Skipping
# the site module halves the interpreter's start-up: `site` runs every .pth file
# of the host's dist-packages (on some machines these import certifi and more),
# which is host code the sandbox has no use for. What `site` gives a program is
# restored below: the same sys.path and the exit/quit/help builtins.
#
# Why PID 1: the kernel ignores signals sent to a namespace's init from inside
# the namespace, so `os.kill(-1, 9)` or `os.kill(os.getppid(), 9)` cannot take
# the harness down, and when this process exits every process in the sandbox
# dies with it. After each test it kills everything else, so a daemon forked by
# test k cannot touch test k+1.
#
# Protocol (fd 0 from the host, fd 1 to the host):
#   host -> driver: a header line "mode fn_name ntests cpu_s wall_s as_bytes
#     fsize_bytes nofile nproc stdout_bytes stderr_bytes", then the code and each
#     test input as "<byte length>\n<bytes>".
#   driver -> host: one JSON line {"ready":true} or {"ce":"..."}; then one JSON
#     line per test (byte fields in base64).
#   host -> driver: "c" (next test) or "q" (stop) after each result.
# Expected outputs never come here: the host compares.
#
# Start-up time is the sandbox's main cost, so only C (or frozen) modules are
# imported here: json, base64, signal, traceback and ctypes pull in re, enum or
# struct (~3-20 ms).
import binascii
import builtins
import io
import os
import resource
import select
import sys
import time

SIGKILL = 9
json = None  # imported in main() for functional tests only


def not_dumpable():
    """prctl(PR_SET_DUMPABLE, 0) through _ctypes alone (ctypes' Python part costs ~3 ms).

    Not dumpable: a candidate (same uid) may not ptrace this process or open
    /proc/1/fd/* to forge protocol lines."""
    import _ctypes

    class c_int(_ctypes._SimpleCData):
        _type_ = "i"

    class Fn(_ctypes.CFuncPtr):
        _flags_ = _ctypes.FUNCFLAG_CDECL
        _restype_ = c_int

    class Libc:
        _handle = _ctypes.dlopen(None, os.RTLD_NOW)

    if Fn(("prctl", Libc()))(4, 0, 0, 0, 0) != 0:  # PR_SET_DUMPABLE = 4
        raise OSError("prctl(PR_SET_DUMPABLE) failed")


def as_if_site():
    """What the site module would have given the candidate: sys.path and builtins."""
    site_path = globals().get("SITE_PATH")
    if site_path:
        sys.path[:] = site_path
    import _sitebuiltins

    builtins.exit = _sitebuiltins.Quitter("exit", "Ctrl-D (i.e. EOF)")
    builtins.quit = _sitebuiltins.Quitter("quit", "Ctrl-D (i.e. EOF)")
    builtins.help = _sitebuiltins._Helper()
    builtins.copyright = _sitebuiltins._Printer("copyright", sys.copyright)
    builtins.credits = _sitebuiltins._Printer("credits", "See https://www.python.org/.")
    builtins.license = _sitebuiltins._Printer("license", "See https://www.python.org/psf/license/")


if sys.flags.no_site:
    as_if_site()

PROTO_IN = sys.stdin.buffer
PROTO_OUT = os.fdopen(os.dup(1), "wb", buffering=0)


def b64(data):
    return binascii.b2a_base64(bytes(data), newline=False).decode()


def jstr(text):
    """A JSON string of arbitrary text, without the json module."""
    return '"' + b64(text.encode("utf-8", "replace")) + '"'


def send(fields):
    """One JSON line; values are numbers, booleans, None, or already-encoded strings."""
    parts = []
    for k, v in fields.items():
        if v is None:
            v = "null"
        elif v is True:
            v = "true"
        elif v is False:
            v = "false"
        elif isinstance(v, (int, float)):
            v = repr(v)
        parts.append('"%s":%s' % (k, v))
    PROTO_OUT.write(("{" + ",".join(parts) + "}\n").encode())


# Outside a sandbox (the explicit `sandbox: none`) this is not PID 1: then
# kill(-1) would reach every process of the user, and /tmp is the host's.
SANDBOXED = os.getpid() == 1
CHILD_PGID = [0]

# pid -> (status, rusage) of children reaped by kill_others, so the main
# child's status and CPU time survive being reaped there.
REAPED = {}


def kill_others():
    """SIGKILL every process in the namespace but this one, then reap them."""
    for _ in range(3):
        try:
            if SANDBOXED:
                os.kill(-1, SIGKILL)
            elif CHILD_PGID[0]:
                os.killpg(CHILD_PGID[0], SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        while True:
            try:
                pid, status, ru = os.wait4(-1, 0)
            except ChildProcessError:
                break
            REAPED[pid] = (status, ru)
        try:
            if SANDBOXED:
                os.kill(-1, 0)
            elif CHILD_PGID[0]:
                os.killpg(CHILD_PGID[0], 0)
            else:
                return
        except (ProcessLookupError, PermissionError):
            return


def wipe_tmp():
    """A full /tmp from one test must not fail the next."""
    if not SANDBOXED:
        return
    try:
        names = os.listdir("/tmp")
    except OSError:
        return
    if not names:
        return
    import shutil

    for n in names:
        p = os.path.join("/tmp", n)
        try:
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p, ignore_errors=True)
            else:
                os.unlink(p)
        except OSError:
            pass


def child(req, code_obj, test_input, out_w, err_w, res_w, in_fd):
    """Runs in the forked child; never returns."""
    rc = 70
    try:
        os.setsid()
        # Move the descriptors the candidate gets to 0..3 and close the rest,
        # including the protocol pipes to the host.
        fds = [os.dup(fd) for fd in (in_fd, out_w, err_w, res_w)]
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        os.closerange(4, 1 << 16)
        lim = req["limits"]
        cpu = int(lim["cpu_s"])
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_AS, (lim["as_bytes"], lim["as_bytes"]))
        resource.setrlimit(resource.RLIMIT_FSIZE, (lim["fsize_bytes"], lim["fsize_bytes"]))
        resource.setrlimit(resource.RLIMIT_NOFILE, (lim["nofile"], lim["nofile"]))
        resource.setrlimit(resource.RLIMIT_NPROC, (lim["nproc"], lim["nproc"]))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        # Fresh stdio configured as CPython's startup does it for pipes.
        sys.stdin = sys.__stdin__ = io.TextIOWrapper(
            io.BufferedReader(io.FileIO(0, "rb", closefd=False)),
            encoding="utf-8",
            errors="surrogateescape",
        )
        sys.stdout = sys.__stdout__ = io.TextIOWrapper(
            io.BufferedWriter(io.FileIO(1, "wb", closefd=False)),
            encoding="utf-8",
            errors="surrogateescape",
        )
        sys.stderr = sys.__stderr__ = io.TextIOWrapper(
            io.BufferedWriter(io.FileIO(2, "wb", closefd=False)),
            encoding="utf-8",
            errors="backslashreplace",
            line_buffering=True,
        )
        if SANDBOXED:
            os.chdir("/tmp")
    except BaseException:
        os._exit(rc)

    exc_name = None
    payload = None
    rc = 0
    try:
        g = {"__name__": "__main__", "__builtins__": __builtins__}
        exec(code_obj, g)
        if req["mode"] == "functional":
            text = test_input.decode("utf-8", "surrogateescape")
            args = [json.loads(line) for line in text.split("\n") if line.strip() != ""]
            fn = req["fn_name"]
            if "Solution" in g:
                target = getattr(g["Solution"](), fn)
            else:
                target = g[fn]
            result = target(*args)
            try:
                payload = json.dumps(result)
            except (TypeError, ValueError):
                payload = None
                exc_name = "Unserializable"
    except SystemExit as e:
        code = e.code
        if code is None:
            rc = 0
        elif isinstance(code, int):
            rc = code & 0xFF
        else:
            try:
                print(code, file=sys.stderr)
            except BaseException:
                pass
            rc = 1
    except BaseException as e:
        exc_name = type(e).__name__
        rc = 1
        try:
            # CPython's own traceback printer, in C: no traceback module to import.
            sys.__excepthook__(type(e), e, e.__traceback__)
        except BaseException:
            pass
    # What CPython does at exit: join non-daemon threads, run atexit, flush.
    try:
        th = sys.modules.get("threading")
        if th is not None:
            th._shutdown()
    except BaseException:
        pass
    try:
        import atexit

        atexit._run_exitfuncs()
    except BaseException:
        pass
    try:
        sys.stdout.flush()
    except BaseException:
        rc = rc or 120
    try:
        sys.stderr.flush()
    except BaseException:
        pass
    try:
        # "<exception name>\n" then "1<result JSON>" or "0".
        tail = "0" if payload is None else "1" + payload
        os.write(3, ((exc_name or "") + "\n" + tail).encode("utf-8", "surrogateescape"))
    except BaseException:
        pass
    os._exit(rc)


def run_test(req, code_obj, index, test_input, file_mode=False):
    """One test in a forked child. file_mode (TACO's fallback): the input is
    /tmp/input.txt, stdin is empty, and /tmp/output.txt is reported as stdout."""
    lim = req["limits"]
    in_fd = os.memfd_create("stdin")
    if file_mode:
        with open("/tmp/input.txt", "wb") as f:
            f.write(test_input)
    elif req["mode"] == "stdin":
        os.write(in_fd, test_input)
    os.lseek(in_fd, 0, os.SEEK_SET)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    res_r, res_w = os.pipe()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        child(req, code_obj, test_input, out_w, err_w, res_w, in_fd)
    CHILD_PGID[0] = pid
    for fd in (out_w, err_w, res_w, in_fd):
        os.close(fd)
    pidfd = os.pidfd_open(pid)
    bufs = {out_r: bytearray(), err_r: bytearray(), res_r: bytearray()}
    caps = {out_r: lim["stdout_bytes"], err_r: lim["stderr_bytes"], res_r: 1 << 26}
    over = {out_r: False, err_r: False, res_r: False}
    open_fds = {out_r, err_r, res_r}
    poller = select.poll()
    for fd in open_fds:
        poller.register(fd, select.POLLIN)
    poller.register(pidfd, select.POLLIN)
    deadline = start + lim["wall_s"]
    timed_out = False
    ole = False
    exited = False
    killed = False
    while open_fds or not exited:
        if not exited:
            now = time.monotonic()
            if now >= deadline:
                timed_out = True
                kill_others()
                killed = True
                exited = True
                continue
            events = poller.poll(max(1, int((deadline - now) * 1000)))
        else:
            events = poller.poll(1000)
            if not events:
                # Stragglers hold a pipe open after the child exited.
                kill_others()
                killed = True
        for fd, _ in events:
            if fd == pidfd:
                poller.unregister(pidfd)
                exited = True
                try:
                    _, status, ru = os.wait4(pid, 0)
                    REAPED[pid] = (status, ru)
                except ChildProcessError:
                    pass
                # The main process is gone: background processes die with it.
                kill_others()
                killed = True
                continue
            try:
                chunk = os.read(fd, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                poller.unregister(fd)
                open_fds.discard(fd)
                os.close(fd)
                continue
            buf = bufs[fd]
            room = caps[fd] - len(buf)
            if room > 0:
                buf += chunk[:room]
            if len(chunk) > room:
                over[fd] = True
                if fd == out_r and not ole:
                    ole = True
                    kill_others()
                    killed = True
                    exited = True
    wall = time.monotonic() - start
    if not killed:
        kill_others()
    if pid not in REAPED:
        try:
            _, status, ru = os.wait4(pid, 0)
            REAPED[pid] = (status, ru)
        except ChildProcessError:
            pass
    status, ru = REAPED.pop(pid, (None, None))
    REAPED.clear()
    os.close(pidfd)
    file_out = None
    if file_mode:
        try:
            with open("/tmp/output.txt", "rb") as f:
                file_out = f.read(lim["stdout_bytes"])
        except OSError:
            file_out = None
    wipe_tmp()
    cpu = (ru.ru_utime + ru.ru_stime) if ru is not None else None
    exit_code = None
    sig = None
    if status is not None:
        if os.WIFEXITED(status):
            exit_code = os.WEXITSTATUS(status)
        elif os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
    exc, _, rest = bytes(bufs[res_r]).partition(b"\n")
    result = rest[1:] if rest[:1] == b"1" else None
    return {
        "i": index,
        "exit_code": exit_code,
        "signal": sig,
        "timed_out": timed_out,
        "ole": ole,
        "cpu_s": cpu,
        "wall_s": wall,
        "max_rss_kb": ru.ru_maxrss if ru is not None else None,
        "stdout": '"' + b64(bufs[out_r]) + '"',
        "stderr": '"' + b64(bufs[err_r]) + '"',
        "stderr_truncated": over[err_r],
        "exc": '"' + b64(exc) + '"' if exc else None,
        "result": '"' + b64(result) + '"' if result is not None else None,
        "file_mode": file_mode,
        "file_out": ('"' + b64(file_out) + '"') if file_out is not None else None,
    }


# ------------------------------------------------------------ lcb and taco
#
# `lcb` reproduces what LiveCodeBench's lcb_runner decides (evaluation/
# testing_util.py, compute_code_generation_metrics.py at LiveCodeBench
# 28fef95e) and `taco` what TACO's metrics/testing_util.py decides (FlagOpen/
# TACO 245eba3b): the same program transformations, the same in-process
# patching, the same comparisons, written here from reading them. Both run the
# candidate inside this sandbox like `strict` does; only the semantics differ.
#
# LCB's import preamble: these modules with `from m import *` in this order,
# then plain imports of all but builtins and typing, then the recursion limit.
LCB_STAR = ("string re datetime collections heapq bisect copy math random statistics "
            "itertools functools operator io sys json builtins typing").split()
LCB_PLAIN = [m for m in LCB_STAR if m not in ("builtins", "typing")]


def lcb_preamble():
    return ("".join("from %s import *\n" % m for m in LCB_STAR)
            + "".join("import %s\n" % m for m in LCB_PLAIN)
            + "sys.setrecursionlimit(50000)\n")


# TACO's preamble (synthesize_*_code), line for line.
TACO_PREAMBLE = "".join(line + "\n" for line in (
    "import sys", "import time", "import itertools",
    "from itertools import accumulate, product, permutations, combinations",
    "import collections",
    "from collections import Counter, OrderedDict, deque, defaultdict, ChainMap",
    "from functools import lru_cache", "import math",
    "from math import sqrt, sin, cos, tan, ceil, fabs, floor, gcd, exp, log, log2",
    "import fractions", "from typing import List, Tuple", "import numpy as np",
    "import random", "import heapq", "from heapq import *",
))
TACO_STD_IO = "\nstdin = sys.stdin\nstdout = sys.stdout\n"

# What both harnesses disable before running a candidate (their
# reliability_guard); TACO also disables exit().
GUARD_OS = ("kill system putenv remove removedirs rmdir fchdir setuid fork forkpty killpg "
            "rename renames truncate replace unlink fchmod fchown chmod chown chroot "
            "lchflags lchmod lchown getcwd chdir").split()
GUARD_MODULES = ("ipdb", "joblib", "resource", "psutil", "tkinter")


def preload(semantics):
    """Imports the modules a semantics needs while the warm sandbox waits."""
    names = []
    if semantics == "lcb":
        names = LCB_STAR + ["ast", "signal"]
    elif semantics == "taco":
        names = ["numpy", "fractions", "random", "heapq", "itertools", "collections",
                 "functools", "math", "typing", "signal", "subprocess", "shutil",
                 "faulthandler", "json"]
    for n in names:
        try:
            __import__(n)
        except Exception:
            pass


def taco_std_programs(code):
    """TACO's two forms of a stdin program: (run as is, wrapped in code()).

    A line is an `import *` line, an import line (starts with "from " or
    "import "), or code. The preamble goes before the first code line; the
    wrapped form hoists `import *` lines above `def code():` and indents the rest
    with a tab. Returns (plain, wrapped, started)."""
    lines = code.split("\n")
    kinds = [2 if "import *" in x else 1 if x.startswith(("from ", "import ")) else 0
             for x in lines]
    star = "\n".join(x.lstrip("\t") for x, k in zip(lines, kinds) if k == 2)
    plain, wrapped, started = [], [], False
    for x, k in zip(lines, kinds):
        if k == 0 and not started:
            plain.append(TACO_PREAMBLE + TACO_STD_IO + x + "\n")
            wrapped.append(TACO_PREAMBLE + star + TACO_STD_IO + "def code():\n\t" + x + "\n")
            started = True
            continue
        plain.append(x + "\n")
        if k < 2:
            wrapped.append(("\t" if started else "") + x + "\n")
    return "".join(plain), "".join(wrapped), started


def lcb_stdin_program(code):
    """LCB's stdin transformation: a trailing `if __name__ == '__main__':` is
    replaced by its body; top-level imports stay at module level after the
    preamble, everything else becomes the body of wrapped_function(). When
    that fails the code is returned unchanged (LCB then finds no function)."""
    import ast

    try:
        tree = ast.parse(code)
        last = tree.body[-1]
        if isinstance(last, ast.If) and ast.unparse(last.test).strip() == "__name__ == '__main__'":
            code = ast.unparse(tree.body[:-1]) + "\n" + ast.unparse(last.body)
    except Exception:
        pass
    try:
        tree = ast.parse(code)
        imports = [s for s in tree.body if isinstance(s, (ast.Import, ast.ImportFrom))]
        rest = [s for s in tree.body if not isinstance(s, (ast.Import, ast.ImportFrom))]
        fn = ast.FunctionDef(
            name="wrapped_function",
            args=ast.arguments(posonlyargs=[], args=[], kwonlyargs=[], kw_defaults=[], defaults=[]),
            body=rest, decorator_list=[], lineno=-1)
        return lcb_preamble() + "\n" + ast.unparse(imports) + "\n" + ast.unparse(fn)
    except Exception:
        return code


class LcbStdinBuffer:
    """sys.stdin.buffer under LCB: read() is all input, readline() always the first line."""

    def __init__(self, inputs):
        self.inputs = inputs.encode("utf-8")

    def read(self, *args):
        return self.inputs

    def readline(self, *args):
        return self.inputs.split(b"\n")[0] + b"\n"


class LcbStdin:
    """sys.stdin under LCB: read() always returns the whole input, readlines()
    the lines without newlines, readline() reads on; anything else goes to a
    StringIO (so the object is not iterable)."""

    def __init__(self, inputs):
        self.inputs = inputs
        self._stringio = io.StringIO(inputs)
        self.buffer = LcbStdinBuffer(inputs)

    def read(self, *args):
        return self.inputs

    def readline(self, *args):
        return self._stringio.readline(*args)

    def readlines(self, *args):
        return self.inputs.split("\n")

    def __getattr__(self, name):
        return getattr(self._stringio, name)


def guard(exit_too, code_text):
    """The reliability_guard both harnesses apply (without a memory limit).

    subprocess and shutil are loaded (and patched) only when the code could
    reach them: importing them costs ~10 ms a candidate, and a module the
    program never loads cannot be used."""
    lowered = code_text.lower()
    if "subprocess" in lowered or "popen" in lowered or "shutil" in lowered or "import_module" in lowered or "__import__" in lowered:
        import shutil
        import subprocess

        shutil.rmtree = shutil.move = shutil.chown = None
        subprocess.Popen = None
    if exit_too:
        builtins.exit = None
    builtins.quit = None
    os.environ["OMP_NUM_THREADS"] = "1"
    for n in GUARD_OS:
        setattr(os, n, None)
    builtins.help = None
    for m in GUARD_MODULES:
        sys.modules[m] = None


def truncated(s, n=300):
    try:
        s = s if isinstance(s, str) else str(s)
    except BaseException:
        return "<unprintable>"
    return s if len(s) <= n else s[: n // 2] + "...(truncated) ..." + s[-n // 2:]


def lcb_lines(text):
    return [line.strip() for line in text.strip().split("\n")]


def lcb_stdout_ok(got, want):
    """LCB's stdin comparison, with Python's own Decimal."""
    a, b = lcb_lines(got), lcb_lines(want)
    if len(a) != len(b):
        return False, "mismatched output length: %d lines, expected %d" % (len(a), len(b))
    from decimal import Decimal

    for k, (x, y) in enumerate(zip(a, b)):
        if x == y:
            continue
        try:
            dx = [Decimal(t) for t in x.split()]
            dy = [Decimal(t) for t in y.split()]
        except Exception:
            return False, "line %d: %s != %s" % (k + 1, truncated(x, 80), truncated(y, 80))
        if dx != dy:
            return False, "line %d: %s != %s" % (k + 1, truncated(x, 80), truncated(y, 80))
    return True, None


def inproc_child(req, code_text, tests, expected, res_fd):
    """The candidate's one process under lcb, and under taco for functional
    problems: every test runs in it in turn (state carries over, as in those
    harnesses), under a wall-clock alarm. Reports "<index> <status> <note>"
    lines on res_fd and stops at the first failure."""
    import signal

    write = os.write
    sem = req["semantics"]
    tle_s = req["tle_s"]
    taco = sem == "taco"
    functional = req["mode"] == "functional"

    def report(i, status, note=""):
        try:
            write(res_fd, ("%d %s %s\n" % (i, status, b64(str(note).encode("utf-8", "replace")))).encode())
        except BaseException:
            os._exit(71)

    class TimeoutException(Exception):
        pass

    def on_alarm(signum, frame):
        print("alarm went off" if taco else "timeout occured: alarm went off")
        raise TimeoutException

    def alarm(s):
        signal.setitimer(signal.ITIMER_REAL, s)

    signal.signal(signal.SIGALRM, on_alarm)
    if not taco:
        sys.set_int_max_str_digits(50000)
    # The process's own stdin as those harnesses leave it (/dev/null), which
    # the preamble's `from sys import *` binds; its stdout is not captured.
    sys.stdin = open(os.devnull)
    texts = [t.decode("utf-8", "surrogateescape") for t in tests]
    wants = [t.decode("utf-8", "surrogateescape") for t in expected]

    def failed(i, e):
        r = "<unprintable>"
        try:
            r = repr(e)
        except BaseException:
            pass
        if "timeoutexception" in r.lower():
            report(i, "tle", "alarm after %gs (TimeoutException)" % tle_s)
        elif isinstance(e, MemoryError):
            report(i, "mle", "MemoryError")
        else:
            report(i, "re", truncated(r))

    if not taco and "numpy" in code_text:
        # LCB's process has numpy loaded before its guard (testing_util imports
        # it); imported after the guard it fails. Only when the code names it:
        # it costs ~100 ms.
        try:
            import numpy  # noqa: F401
        except ImportError:
            pass
    if not functional:  # lcb stdin
        use_mock_open = "open" in code_text
        if use_mock_open:
            from unittest import mock
        guard(False, code_text)
        src = lcb_stdin_program(code_text)
        alarm(tle_s)
        try:
            mod = type(sys)("tmp_sol", "")
            exec(src, mod.__dict__)
            target = mod.Solution() if "class Solution" in src else mod
        except Exception as e:
            alarm(0)
            report(0, "ce" if isinstance(e, SyntaxError) else "re", "while loading: " + truncated(repr(e)))
            return
        alarm(0)
        method = getattr(target, "wrapped_function", None) if hasattr(target, "wrapped_function") else None
        if method is None:
            report(0, "re", "no wrapped_function: LCB could not transform the program")
            return
        real_stdin = sys.stdin
        for i, text in enumerate(texts):
            lines = iter(text.split("\n"))
            cap = io.StringIO()
            cap.close = lambda x: 1  # as LCB's capture: close() takes an argument
            saved_out = sys.stdout
            saved_open = builtins.open
            alarm(tle_s)
            sys.stdout = cap
            err = None
            try:
                patched = {"read": lambda *a: text, "readlines": lambda *a: text.split("\n"),
                           "readline": lambda *a: next(lines)}
                for k, v in patched.items():
                    setattr(real_stdin, k, v)
                sys.stdin = LcbStdin(text)
                if use_mock_open:
                    builtins.open = mock.mock_open(read_data=text)
                try:
                    method()
                except SystemExit:
                    pass
                finally:
                    builtins.open = saved_open
                    sys.stdin = real_stdin
                    for k in patched:
                        try:
                            delattr(real_stdin, k)
                        except BaseException:
                            pass
                alarm(0)
            except Exception as e:
                alarm(0)
                err = e
            finally:
                alarm(0)
                sys.stdout = saved_out
            if err is not None:
                failed(i, err)
                return
            ok, note = lcb_stdout_ok(cap.getvalue(), wants[i])
            if not ok:
                report(i, "wa", note)
                return
            report(i, "pass")
        return

    import json as _json

    fn = req["fn_name"]
    src = (TACO_PREAMBLE if taco else lcb_preamble() + "\n\n") + code_text
    if not taco:
        guard(False, code_text)  # LCB guards before loading; TACO after
    alarm(tle_s)
    try:
        if taco:
            g = {}
            exec(src, g)
            mod = type(sys)("tmp_sol", "")
            mod.__dict__.update(g)
        else:
            mod = type(sys)("tmp_sol", "")
            exec(src, mod.__dict__)
        target = mod.Solution() if "class Solution" in src else mod
    except Exception as e:
        alarm(0)
        report(0, "ce" if isinstance(e, SyntaxError) else "re", "while loading: " + truncated(repr(e)))
        return
    alarm(0)
    method = getattr(target, fn, None) if hasattr(target, fn) else None
    if method is None:
        report(0, "re", "no callable %s on %s" % (fn, "Solution()" if "class Solution" in src else "the module"))
        return
    try:
        args = [[_json.loads(line) for line in t.split("\n")] for t in texts]
        outs = [_json.loads(w) for w in wants]
    except Exception as e:
        report(0, "re", "test data is not JSON per line: " + truncated(repr(e)))
        return
    if taco:
        guard(True, code_text)

        def int_keys(d):
            try:
                return {int(k): v for k, v in d.items()}
            except Exception:
                return None

        # TACO's process_input_output; valley's schema unwrapped APPS's
        # one-element output lists, so the expected list is [value].
        for k, a in enumerate(args):
            if a and isinstance(a[0], dict) and int_keys(a[0]) is not None:
                args[k] = [int_keys(a[0])]
        outs = [[int_keys(o)] if isinstance(o, dict) and int_keys(o) is not None else [o] for o in outs]
    for i in range(len(texts)):
        alarm(tle_s)
        try:
            got = method(*args[i])
        except Exception as e:
            alarm(0)
            failed(i, e)
            return
        try:
            if isinstance(got, tuple):
                got = list(got)
            want = outs[i]
            if taco:
                ok = got == want
                if isinstance(want, list) and want:
                    ok = ok or (got == want[0])
                try:
                    if isinstance(got[0], tuple):
                        got = [list(x) for x in got]
                        ok = ok or (got == want[0])
                except Exception:
                    pass
            else:
                ok = got == want
            verdict = bool(ok)
            alarm(0)
        except Exception as e:
            alarm(0)
            if taco:
                report(i, "tle", "comparison failed (TACO counts it as a time-out): " + truncated(repr(e)))
            else:
                failed(i, e)
            return
        if not verdict:
            report(i, "wa", "returned %s, expected %s" % (truncated(got, 120), truncated(outs[i], 120)))
            return
        report(i, "pass")


def run_inproc(req, code_text, tests, expected):
    """Runs inproc_child and relays its results, with LCB's overall clock
    ((time limit + 1) × tests + 5 s). Returns when it has ended."""
    lim = req["limits"]
    n = len(tests)
    in_fd = os.memfd_create("stdin")
    err_r, err_w = os.pipe()
    res_r, res_w = os.pipe()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            fds = [os.dup(fd) for fd in (in_fd, err_w, err_w, res_w)]
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
            os.closerange(4, 1 << 16)
            cpu = int(lim["cpu_s"])
            resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
            resource.setrlimit(resource.RLIMIT_AS, (lim["as_bytes"], lim["as_bytes"]))
            resource.setrlimit(resource.RLIMIT_FSIZE, (lim["fsize_bytes"], lim["fsize_bytes"]))
            resource.setrlimit(resource.RLIMIT_NOFILE, (lim["nofile"], lim["nofile"]))
            resource.setrlimit(resource.RLIMIT_NPROC, (lim["nproc"], lim["nproc"]))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            sys.stdout = sys.__stdout__ = io.TextIOWrapper(
                io.BufferedWriter(io.FileIO(1, "wb", closefd=False)), encoding="utf-8",
                errors="surrogateescape", line_buffering=True)
            sys.stderr = sys.__stderr__ = io.TextIOWrapper(
                io.BufferedWriter(io.FileIO(2, "wb", closefd=False)), encoding="utf-8",
                errors="backslashreplace", line_buffering=True)
            if SANDBOXED:
                os.chdir("/tmp")
            inproc_child(req, code_text, tests, expected, 3)
        except BaseException:
            pass
        os._exit(0)
    CHILD_PGID[0] = pid
    for fd in (err_w, res_w, in_fd):
        os.close(fd)
    pidfd = os.pidfd_open(pid)
    err = bytearray()
    res = bytearray()
    open_fds = {err_r, res_r}
    poller = select.poll()
    for fd in open_fds:
        poller.register(fd, select.POLLIN)
    poller.register(pidfd, select.POLLIN)
    deadline = start + lim["wall_s"]
    nxt = 0
    stop = False
    exited = False
    timed_out = False
    last = start

    def emit(status, note):
        nonlocal nxt, last, stop
        now = time.monotonic()
        send({"i": nxt, "exit_code": 0, "signal": None, "timed_out": status == "tle", "ole": False,
              "cpu_s": None, "wall_s": now - last, "stdout": '""',
              "stderr": '"' + b64(err[-2048:]) + '"' if status != "pass" else '""',
              "stderr_truncated": False, "exc": None, "result": None,
              "status": jstr(status), "note": jstr(note)})
        last = now
        nxt += 1
        if status != "pass" or nxt >= n:
            stop = True

    while not stop and (open_fds or not exited):
        now = time.monotonic()
        if now >= deadline:
            timed_out = True
            break
        events = poller.poll(max(1, int((deadline - now) * 1000)))
        for fd, _ in events:
            if fd == pidfd:
                poller.unregister(pidfd)
                exited = True
                continue
            try:
                chunk = os.read(fd, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                poller.unregister(fd)
                open_fds.discard(fd)
                os.close(fd)
                continue
            if fd == err_r:
                if len(err) < lim["stderr_bytes"]:
                    err += chunk[: lim["stderr_bytes"] - len(err)]
                continue
            res += chunk
            while b"\n" in res and not stop:
                line, _, rest = bytes(res).partition(b"\n")
                res[:] = rest
                parts = line.split(b" ")
                if len(parts) != 3 or int(parts[0]) != nxt:
                    emit("re", "the program wrote to the harness's result pipe")
                    break
                emit(parts[1].decode(), binascii.a2b_base64(parts[2]).decode("utf-8", "replace"))
        if exited and res_r not in open_fds and not stop:
            break
    kill_others()
    status = None
    try:
        _, status, _ = os.wait4(pid, os.WNOHANG)
    except ChildProcessError:
        status = REAPED.get(pid, (None,))[0]
    if not stop:
        if timed_out:
            emit("tle", "overall time-out: %gs for %d tests" % (lim["wall_s"], n))
        else:
            how = "the process ended"
            if status is not None and os.WIFSIGNALED(status):
                how += " (signal %d)" % os.WTERMSIG(status)
            emit("re", how + " before the test finished (LCB: global failure)")
    for fd in open_fds:
        os.close(fd)
    os.close(pidfd)
    REAPED.clear()
    wipe_tmp()


def read_blob():
    n = int(PROTO_IN.readline())
    data = PROTO_IN.read(n)
    if len(data) != n:
        raise EOFError("truncated request")
    return data


def main():
    global json
    try:
        not_dumpable()
    except Exception as e:
        if SANDBOXED:
            # A dumpable harness could be ptraced by the candidate: refuse to run.
            sys.stderr.write("harness: cannot make itself non-dumpable: %r\n" % (e,))
            sys.exit(70)
    preload(os.environ.get("VALLEY_PRELOAD", ""))
    head = PROTO_IN.readline().decode().split()
    if not head:
        return  # an unused warm sandbox being closed
    keys = ["cpu_s", "wall_s", "as_bytes", "fsize_bytes", "nofile", "nproc", "stdout_bytes", "stderr_bytes"]
    limits = dict(zip(keys, [float(x) if k == "wall_s" else int(x) for k, x in zip(keys, head[3:])]))
    semantics, variant, tle_s = head[11], head[12], float(head[13])
    req = {"mode": head[0], "fn_name": head[1], "limits": limits, "semantics": semantics,
           "tle_s": tle_s}
    code = read_blob()
    tests = [read_blob() for _ in range(int(head[2]))]
    inproc = semantics == "lcb" or (semantics == "taco" and req["mode"] == "functional")
    expected = [read_blob() for _ in range(int(head[2]))] if inproc else []
    if req["mode"] == "functional":
        import json  # noqa: F401  (only functional tests need it; it costs ~10 ms)
    if inproc:
        send({"ready": True})
        run_inproc(req, code.decode("utf-8", "surrogateescape"), tests, expected)
        return
    if semantics == "taco":
        try:
            import numpy  # noqa: F401  (TACO's preamble imports it)
        except ImportError:
            send({"ie": jstr("TACO semantics need numpy in the sandbox's /usr (apt-get install python3-numpy)")})
            return
        plain, wrapped, started = taco_std_programs(code.decode("utf-8", "surrogateescape"))
        # TACO first loads the wrapped form and gives up when it has no code().
        try:
            if not started:
                raise SyntaxError("no code line: the wrapped form defines no code()")
            compile(wrapped, "<solution>", "exec", dont_inherit=True)
        except (SyntaxError, ValueError) as e:
            send({"ce": jstr("TACO's wrapped form does not compile: %s: %s" % (type(e).__name__, e)),
                  "final": True})
            return
        code = (plain if variant == "plain" else wrapped + "\ncode()\n").encode("utf-8", "surrogateescape")
    try:
        code_obj = compile(code, "<solution>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as e:
        send({"ce": jstr("%s: %s" % (type(e).__name__, e))})
        return
    send({"ready": True})
    for index, test_input in enumerate(tests):
        r = run_test(req, code_obj, index, test_input)
        if semantics == "taco" and r["exit_code"] != 0 and not r["timed_out"] and not r["ole"] and SANDBOXED:
            # TACO retries a failed run reading input.txt and judging output.txt.
            f = run_test(req, code_obj, index, test_input, file_mode=True)
            r.update({"file_exit": f["exit_code"], "file_timed_out": f["timed_out"], "file_out": f["file_out"]})
        send(r)
        cmd = PROTO_IN.readline().strip()
        if cmd != b"c":
            break


main()
