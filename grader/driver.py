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


def run_test(req, code_obj, index, test_input):
    lim = req["limits"]
    in_fd = os.memfd_create("stdin")
    if req["mode"] == "stdin":
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
    }


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
    head = PROTO_IN.readline().decode().split()
    if not head:
        return  # an unused warm sandbox being closed
    keys = ["cpu_s", "wall_s", "as_bytes", "fsize_bytes", "nofile", "nproc", "stdout_bytes", "stderr_bytes"]
    limits = dict(zip(keys, [float(x) if k == "wall_s" else int(x) for k, x in zip(keys, head[3:])]))
    req = {"mode": head[0], "fn_name": head[1], "limits": limits}
    code = read_blob()
    tests = [read_blob() for _ in range(int(head[2]))]
    if req["mode"] == "functional":
        import json  # noqa: F401  (only functional tests need it; it costs ~10 ms)
    try:
        code_obj = compile(code, "<solution>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as e:
        send({"ce": jstr("%s: %s" % (type(e).__name__, e))})
        return
    send({"ready": True})
    for index, test_input in enumerate(tests):
        send(run_test(req, code_obj, index, test_input))
        cmd = PROTO_IN.readline().strip()
        if cmd != b"c":
            break


main()
