#!/usr/bin/python3
"""Runs the differential cases (test/fixtures/semantics/cases.py) through the
real LiveCodeBench and TACO harnesses and records their verdicts in
test/fixtures/semantics/{lcb,taco}-cases.json. Development only: the tests
read those files and run valley alone.

    /usr/bin/python3 scripts/semantics-reference.py LCB_CHECKOUT TACO_CHECKOUT [lcb|taco] < /dev/null

LCB_CHECKOUT: a checkout of github.com/LiveCodeBench/LiveCodeBench, TACO_CHECKOUT
of github.com/FlagOpen/TACO (their code is imported from there, never copied
here). Needs numpy (Debian: python3-numpy). Run it with stdin from /dev/null:
LCB's `open(0)` reads the evaluator's own stdin.
"""
import importlib.util
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import types

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "test", "fixtures", "semantics")


def commit(path):
    try:
        return subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except Exception:
        return os.environ.get("REF_COMMIT_" + os.path.basename(path.rstrip("/")).upper(), "unknown")


def load(name, path, package=None):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    if package:
        mod.__package__ = package
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def lcb_modules(root):
    # Only the modules the evaluation uses: the package __init__ files pull in
    # model clients. tqdm (a progress bar) is replaced when missing.
    for pkg in ("lcb_runner", "lcb_runner.evaluation", "lcb_runner.utils"):
        m = types.ModuleType(pkg)
        m.__path__ = [os.path.join(root, *pkg.split("."))]
        sys.modules[pkg] = m
    if importlib.util.find_spec("tqdm") is None:
        t = types.ModuleType("tqdm")
        t.tqdm = lambda *a, **k: None
        sys.modules["tqdm"] = t
    styles = load("lcb_runner.lm_styles", os.path.join(root, "lcb_runner/lm_styles.py"))
    extraction = load("lcb_runner.utils.extraction_utils",
                      os.path.join(root, "lcb_runner/utils/extraction_utils.py"))
    load("lcb_runner.evaluation.pass_k_utils", os.path.join(root, "lcb_runner/evaluation/pass_k_utils.py"))
    load("lcb_runner.evaluation.testing_util", os.path.join(root, "lcb_runner/evaluation/testing_util.py"))
    metrics = load("lcb_runner.evaluation.compute_code_generation_metrics",
                   os.path.join(root, "lcb_runner/evaluation/compute_code_generation_metrics.py"))
    return styles, extraction, metrics


def lcb_sample(tests, fn_name):
    return {"input_output": json.dumps({
        "inputs": [t["input"] for t in tests],
        "outputs": [t["output"] for t in tests],
        "fn_name": fn_name,
    })}


def run_lcb(root, cases):
    import numpy as np

    styles, extraction, metrics = lcb_modules(root)
    out = []
    for name, tests, fn_name, answer, strict in cases:
        # Every chat model's style takes the plain ``` path of extract_code.
        code = extraction.extract_code(answer, styles.LMStyle.OpenAIChat)
        # As evaluate_generations_by_problem: a harness exception (e.g. the
        # process died and left no metadata) leaves the result at [-2].
        try:
            res, meta = metrics.check_correctness(lcb_sample(tests, fn_name), code, timeout=6, debug=False)
        except Exception as e:
            res, meta = [-2], {"error_message": "TestRunnerError: %r" % (e,)}
        fixed = [e.item(0) if isinstance(e, np.ndarray) else bool(e) if isinstance(e, np.bool_) else e
                 for e in res]
        passed = bool(np.all(np.array(fixed) > 0))
        print("lcb  %-5s %s" % (passed, name), file=sys.stderr)
        out.append({"name": name, "problem": {"id": "lcb-%d" % len(out), "source": "lcb", "tests": tests,
                                              **({"fn_name": fn_name} if fn_name else {})},
                    "answer": answer, "strict_passes": strict,
                    "reference": {"passed": passed, "results": [r if isinstance(r, (bool, int)) else str(r) for r in fixed],
                                  "error": meta.get("error_message") if isinstance(meta, dict) else None}})
    return out


def taco_worker(root, sample, code, q):
    import collections
    import inspect

    # TACO's pyext2 needs inspect.getargspec, which Python 3.11 removed:
    # restore it (as getfullargspec's first four fields) so that the harness
    # imports at all on the sandbox's interpreter.
    if not hasattr(inspect, "getargspec"):
        ArgSpec = collections.namedtuple("ArgSpec", "args varargs keywords defaults")
        inspect.getargspec = lambda f: ArgSpec(*inspect.getfullargspec(f)[:4])
    sys.path.insert(0, root)
    from metrics.testing_util import run_test

    q.put(run_test(sample, test=code, debug=False))


def run_taco(root, cases):
    import numpy as np

    out = []
    for name, tests, fn_name, answer, strict in cases:
        if fn_name:
            # The APPS layout TACO's harness reads: arguments as a list, the
            # expected value wrapped in a one-element list.
            io_ = {"inputs": [[json.loads(l) for l in t["input"].split("\n")] for t in tests],
                   "outputs": [[json.loads(t["output"])] for t in tests], "fn_name": fn_name}
        else:
            io_ = {"inputs": [t["input"] for t in tests], "outputs": [t["output"] for t in tests]}
        sample = {"input_output": json.dumps(io_)}
        cwd = tempfile.mkdtemp(prefix="taco-ref-")
        os.chdir(cwd)
        q = multiprocessing.Queue()
        p = multiprocessing.Process(target=taco_worker, args=(root, sample, answer, q))
        p.start()
        p.join(300)
        if p.is_alive():
            p.kill()
        try:
            res = q.get(timeout=1)
        except Exception:
            res = [-1] * len(tests)  # as compute_metric's check_correctness: no result
        fixed = [e.item(0) if isinstance(e, np.ndarray) else bool(e) if isinstance(e, np.bool_) else e for e in res]
        passed = bool(np.all(np.array(fixed) > 0))
        print("taco %-5s %s" % (passed, name), file=sys.stderr)
        out.append({"name": name, "problem": {"id": "taco-%d" % len(out), "source": "taco", "tests": tests,
                                              **({"fn_name": fn_name} if fn_name else {})},
                    "answer": "```python\n%s\n```\n" % answer, "strict_passes": strict,
                    "reference": {"passed": passed, "results": fixed}})
    return out


def main():
    lcb_root, taco_root = (os.path.abspath(a) for a in sys.argv[1:3])
    sys.path.insert(0, HERE)
    import cases

    # TACO runs `python <file>`: this interpreter (run this script with the sandbox's, /usr/bin/python3).
    bindir = tempfile.mkdtemp(prefix="ref-bin-")
    os.symlink(sys.executable, os.path.join(bindir, "python"))
    os.environ["PATH"] = bindir + ":/usr/bin:/bin"
    py = "%d.%d.%d" % sys.version_info[:3]
    only = sys.argv[3] if len(sys.argv) > 3 else None  # "lcb" or "taco": one fixture
    if only != "taco":
        write_lcb(lcb_root, cases, py)
    if only != "lcb":
        write_taco(taco_root, cases, py)


def write_lcb(lcb_root, cases, py):
    lcb = run_lcb(lcb_root, cases.LCB)
    with open(os.path.join(HERE, "lcb-cases.json"), "w") as f:
        json.dump({"reference": "LiveCodeBench/LiveCodeBench", "commit": commit(lcb_root),
                   "python": py, "how": "extract_code(answer, LMStyle.OpenAIChat), then "
                   "compute_code_generation_metrics.check_correctness(sample, code, timeout=6); "
                   "passed = all(result > 0) as pass_k_utils", "cases": lcb}, f, indent=1)
        f.write("\n")


def write_taco(taco_root, cases, py):
    taco = run_taco(taco_root, cases.TACO)
    with open(os.path.join(HERE, "taco-cases.json"), "w") as f:
        json.dump({"reference": "FlagOpen/TACO", "commit": commit(taco_root), "python": py,
                   "how": "metrics.testing_util.run_test(sample, test=code) in a child process, "
                   "`python` = this interpreter, inspect.getargspec restored (Python 3.11 "
                   "removed it; TACO's pyext2 needs it); passed = all(result > 0) as compute_metric",
                   "cases": taco}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
