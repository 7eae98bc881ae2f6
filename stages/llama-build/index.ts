/**
 * `llama-build`: llama.cpp built from the source node-llama-cpp ships (a git
 * bundle, no network needed), with the project's own patches and native
 * programs (stages/<kind>/native/), as one artifact: bin/, lib/, build.json.
 *
 * Native programs: every `stages/<kind>/native/` folder holding a
 * CMakeLists.txt is copied into the tree as `valley/<kind>/` and added with
 * add_subdirectory after llama.cpp's own targets, so it can link `llama`,
 * `llama-common` and `ggml`, and include internal headers from
 * `${VALLEY_LLAMA_SOURCE_DIR}/src`. Every target it defines is built and its
 * executables land in bin/ (CMAKE_RUNTIME_OUTPUT_DIRECTORY is llama.cpp's bin/).
 */
import { execFile } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import {
  appendFile,
  cp,
  lstat,
  mkdir,
  readdir,
  readFile,
  realpath,
  rm,
  stat,
  utimes,
  writeFile,
  copyFile,
} from "node:fs/promises";
import { join, relative } from "node:path";
import { promisify } from "node:util";
import {
  BadStageInput,
  type Estimate,
  type Measurement,
  type ParamIssue,
  type Range,
  type StageKind,
} from "../../engine/stage-api.js";
import { sha256Bytes } from "../../cache/digest.js";
import { findCuda } from "../../llama/cuda.js";
import type { Logger } from "pino";
import { runCommand } from "../../engine/process.js";
import { envStrings, hashFile, projectRoot } from "../../llama/toolchain.js";

export interface LlamaBuildParams {
  backend: "cpu" | "cuda";
  /** CMAKE_CUDA_ARCHITECTURES, e.g. "90" (H100/H200); default: llama.cpp's list (slow). */
  cudaArchitectures?: string;
  buildType: "Release" | "RelWithDebInfo" | "Debug" | "MinSizeRel";
  /** Extra cmake -D flags, appended last (they win). */
  cmakeFlags: string[];
  /** Parallel compile jobs; default: the instance's CPU allowance. Not in the binaries, so optional. */
  jobs?: number;
}

export const LLAMA_TARGETS = [
  "llama-quantize",
  "llama-export-lora",
  "llama-server",
  "llama-finetune",
  "llama-perplexity",
  "llama-cli",
];

/** Appended to llama.cpp's top-level CMakeLists.txt once per clone. */
const HOOK =
  "\n# valley: project-native targets (stages/*/native), appended by the llama-build stage\n" +
  "add_subdirectory(valley)\n";

const execFileP = promisify(execFile);

function bundlePath(): string {
  return join(projectRoot(), "node_modules", "node-llama-cpp", "llama", "gitRelease.bundle");
}

async function listPatches(): Promise<string[]> {
  const dir = join(projectRoot(), "stages", "llama-build", "patches");
  if (!existsSync(dir)) return [];
  // Plain code-point order, the same on every machine and locale.
  return (await readdir(dir))
    .filter((f) => f.endsWith(".patch"))
    .sort()
    .map((f) => join(dir, f));
}

async function walk(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...(await walk(p)));
    else if (e.isFile()) out.push(p);
  }
  return out.sort();
}

/** Native folders: kind → absolute path of stages/<kind>/native. */
async function listNatives(): Promise<Map<string, string>> {
  const stages = join(projectRoot(), "stages");
  const found = new Map<string, string>();
  for (const kind of (await readdir(stages)).sort()) {
    const dir = join(stages, kind, "native");
    if (existsSync(join(dir, "CMakeLists.txt"))) found.set(kind, dir);
  }
  return found;
}

async function bundleInfo(): Promise<{ nodeLlamaCpp: string; tag: string }> {
  const pkgDir = join(projectRoot(), "node_modules", "node-llama-cpp");
  const pkg = JSON.parse(await readFile(join(pkgDir, "package.json"), "utf8")) as {
    version: string;
  };
  const info = JSON.parse(await readFile(join(pkgDir, "llama", "llama.cpp.info.json"), "utf8")) as {
    tag: string;
  };
  return { nodeLlamaCpp: pkg.version, tag: info.tag };
}

/**
 * What the binaries depend on beyond the params: the llama.cpp source (the
 * node-llama-cpp release that ships it), each patch applied to it, and every
 * file of every native program compiled with it.
 */
/**
 * With GGML_NATIVE on (llama.cpp's default) the compiler targets this CPU
 * (-march=native): such binaries may die with SIGILL on another machine
 * sharing the cache, so the CPU's feature flags join the key. With
 * -DGGML_NATIVE=OFF the build is portable and the key host-independent.
 */
export function hostCpu(p: Pick<LlamaBuildParams, "cmakeFlags">): string | undefined {
  if ((p.cmakeFlags ?? []).some((f) => /^-DGGML_NATIVE(:BOOL)?=(OFF|0|FALSE|NO)$/i.test(f))) {
    return undefined;
  }
  let flags = "";
  try {
    const info = readFileSync("/proc/cpuinfo", "utf8");
    flags = /^(flags|Features)\s*:\s*(.*)$/m.exec(info)?.[2] ?? "";
  } catch {
    // not Linux: the architecture alone
  }
  return sha256Bytes(`${process.arch}\n${flags.split(/\s+/).sort().join(" ")}`);
}

export async function buildFingerprint(): Promise<Record<string, unknown>> {
  const patches: Record<string, string> = {};
  for (const p of await listPatches()) patches[p.split("/").pop() as string] = await hashFile(p);
  const natives: Record<string, Record<string, string>> = {};
  for (const [kind, dir] of await listNatives()) {
    const files: Record<string, string> = {};
    for (const f of await walk(dir)) files[relative(dir, f)] = await hashFile(f);
    natives[kind] = files;
  }
  return { source: await bundleInfo(), patches, natives };
}

function paramIssues(p: LlamaBuildParams): ParamIssue[] {
  const issues: ParamIssue[] = [];
  if (p.cudaArchitectures !== undefined && p.backend !== "cuda") {
    issues.push({ path: ["cudaArchitectures"], message: "cudaArchitectures needs backend: cuda" });
  }
  (p.cmakeFlags ?? []).forEach((f, i) => {
    if (!/^-D[A-Za-z_][A-Za-z0-9_]*(:[A-Z]+)?=/.test(f)) {
      issues.push({
        path: ["cmakeFlags", i],
        message: `expected -DNAME=VALUE, got ${JSON.stringify(f)}`,
      });
    }
  });
  return issues;
}

/** The cmake configure flags, in order; part of build.json. */
export function configureFlags(p: LlamaBuildParams): string[] {
  const flags = [
    `-DCMAKE_BUILD_TYPE=${p.buildType ?? "Release"}`,
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    // Binaries find their libraries in ../lib (the artifact) or next to
    // themselves (the build tree), wherever the artifact is mounted.
    "-DCMAKE_INSTALL_RPATH=$ORIGIN/../lib;$ORIGIN",
    "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON",
  ];
  if (p.backend === "cuda") {
    flags.push("-DGGML_CUDA=ON");
    if (p.cudaArchitectures) flags.push(`-DCMAKE_CUDA_ARCHITECTURES=${p.cudaArchitectures}`);
  }
  return [...flags, ...(p.cmakeFlags ?? [])];
}

/** Is `src` a clone whose HEAD is `commit`? */
async function cloneAt(src: string, commit: string): Promise<boolean> {
  if (!existsSync(join(src, ".git"))) return false;
  try {
    const { stdout } = await execFileP("git", ["rev-parse", "HEAD"], { cwd: src });
    return stdout.trim() === commit;
  } catch {
    return false;
  }
}

interface FileSnap {
  digest: string;
  /** Seconds, as floats: Date would round to milliseconds. */
  atime: number;
  mtime: number;
}

/** Content digest and times of every file the patches (and the hook) changed. */
async function snapshotModified(src: string): Promise<Map<string, FileSnap>> {
  const { stdout } = await execFileP("git", ["diff", "--name-only", "HEAD"], { cwd: src });
  const snaps = new Map<string, FileSnap>();
  for (const f of stdout.split("\n").filter(Boolean)) {
    const p = join(src, f);
    if (!existsSync(p)) continue;
    const st = await stat(p);
    snaps.set(f, { digest: await hashFile(p), atime: st.atimeMs / 1000, mtime: st.mtimeMs / 1000 });
  }
  return snaps;
}

/**
 * After the reset and the new patches, a file whose content came out the same
 * gets its old mtime back: make then recompiles only what a changed patch
 * really changed (0002 edits llama.h, which nearly everything includes).
 */
async function restoreUnchanged(src: string, snaps: Map<string, FileSnap>): Promise<void> {
  for (const [f, s] of snaps) {
    const p = join(src, f);
    if (existsSync(p) && (await hashFile(p)) === s.digest) await utimes(p, s.atime, s.mtime);
  }
}

interface SourceState {
  bundle: string;
  commit: string;
  patches: string[];
}

/**
 * A clone of the bundle with the patches applied, in scratch. Scratch is kept
 * across attempts of the same key, so a retried build reuses the clone and
 * compiles only what changed; a clone from other sources or patches is redone.
 */
export async function prepareSource(
  scratch: string,
  log: Logger,
  signal: AbortSignal,
): Promise<{ src: string; commit: string; patches: Record<string, string> }> {
  const src = join(scratch, "src");
  const stateFile = join(scratch, "source.json");
  const bundle = bundlePath();
  if (!existsSync(bundle)) {
    throw new Error(`${bundle} is missing: install node-llama-cpp@3.21.1 (npm ci)`);
  }
  const { stdout } = await execFileP("git", ["ls-remote", bundle, "HEAD"]);
  const run = (args: string[], cwd?: string) =>
    runCommand("git", args, { cwd, signal, log, env: envStrings() });
  const commit = stdout.split(/\s/)[0];
  const patches = await listPatches();
  const want: SourceState = {
    bundle: bundle,
    commit,
    patches: await Promise.all(patches.map((p) => hashFile(p))),
  };
  // What was applied, for build.json (the folder may change while we build).
  const applied = Object.fromEntries(
    patches.map((p, i) => [p.split("/").pop() as string, want.patches[i]]),
  );
  if (existsSync(stateFile) && existsSync(src)) {
    const have = JSON.parse(await readFile(stateFile, "utf8")) as SourceState;
    if (JSON.stringify(have) === JSON.stringify(want)) return { src, commit, patches: applied };
  }
  await rm(stateFile, { force: true });
  let touched = new Map<string, FileSnap>();
  if (await cloneAt(src, commit)) {
    // Same source, other patches: reset the tree instead of cloning again, so
    // files no patch touches keep their mtimes and are not recompiled.
    log.info({ commit, patches: patches.length }, "resetting the llama.cpp clone");
    touched = await snapshotModified(src);
    await run(["reset", "-q", "--hard", commit], src);
    // valley/ (the native copies) is kept: syncNatives updates it in place.
    await run(["clean", "-q", "-f", "-d", "-x", "-e", "/valley"], src);
  } else {
    log.info({ commit, patches: patches.length }, "cloning llama.cpp from node-llama-cpp's bundle");
    await rm(src, { recursive: true, force: true });
    await rm(join(scratch, "build"), { recursive: true, force: true });
    await run(["-c", "advice.detachedHead=false", "clone", "-q", bundle, src]);
  }
  for (const p of patches) {
    try {
      await run(["apply", "--whitespace=nowarn", p], src);
    } catch (e) {
      throw new Error(`patch ${p} does not apply to llama.cpp ${commit}: ${(e as Error).message}`, {
        cause: e,
      });
    }
  }
  await appendFile(join(src, "CMakeLists.txt"), HOOK);
  await mkdir(join(src, "valley"), { recursive: true });
  await restoreUnchanged(src, touched);
  await writeFile(stateFile, JSON.stringify(want));
  return { src, commit, patches: applied };
}

/**
 * Copies native folders into the tree and writes valley/CMakeLists.txt. Copies
 * keep their mtimes, so unchanged native sources are not recompiled.
 */
async function syncNatives(src: string): Promise<string[]> {
  const dir = join(src, "valley");
  const natives = await listNatives();
  for (const e of await readdir(dir)) {
    if (e !== "CMakeLists.txt" && !natives.has(e)) await rm(join(dir, e), { recursive: true });
  }
  let cmake =
    "# Generated by valley's llama-build stage. Each stages/<kind>/native folder is\n" +
    "# copied to valley/<kind> and added here, after llama.cpp's own targets, so it\n" +
    "# can link llama, llama-common and ggml and include internal headers from\n" +
    "# VALLEY_LLAMA_SOURCE_DIR/src.\n" +
    'set(VALLEY_LLAMA_SOURCE_DIR "${PROJECT_SOURCE_DIR}")\n' +
    "add_custom_target(valley-native)\n" +
    'set(VALLEY_NATIVE_FILES "")\n';
  for (const [kind, from] of natives) {
    await rm(join(dir, kind), { recursive: true, force: true });
    await cp(from, join(dir, kind), { recursive: true, preserveTimestamps: true });
    cmake +=
      `add_subdirectory(${kind})\n` +
      `get_property(_valley_targets DIRECTORY ${kind} PROPERTY BUILDSYSTEM_TARGETS)\n` +
      "foreach(_t IN LISTS _valley_targets)\n" +
      "  get_target_property(_type ${_t} TYPE)\n" +
      '  if (_type STREQUAL "EXECUTABLE")\n' +
      "    add_dependencies(valley-native ${_t})\n" +
      '    list(APPEND VALLEY_NATIVE_FILES "$<TARGET_FILE_NAME:${_t}>")\n' +
      '  elseif (_type STREQUAL "SHARED_LIBRARY" OR _type STREQUAL "STATIC_LIBRARY")\n' +
      "    add_dependencies(valley-native ${_t})\n" +
      "  endif()\n" +
      "endforeach()\n";
  }
  // The stage reads this list to know which executables are native programs.
  cmake +=
    'string(REPLACE ";" "\\n" _valley_lines "${VALLEY_NATIVE_FILES}")\n' +
    'file(GENERATE OUTPUT "${CMAKE_BINARY_DIR}/valley-native.txt" CONTENT "${_valley_lines}\\n")\n';
  const file = join(dir, "CMakeLists.txt");
  const old = existsSync(file) ? await readFile(file, "utf8") : "";
  if (old !== cmake) await writeFile(file, cmake);
  return [...natives.keys()];
}

/**
 * bin/: the programs; lib/: the shared libraries under their SONAMEs
 * (libggml.so.0, ...), as plain files: an artifact store need not keep symlinks.
 */
async function install(build: string, out: string, programs: string[]): Promise<void> {
  const from = join(build, "bin");
  await mkdir(join(out, "bin"), { recursive: true });
  await mkdir(join(out, "lib"), { recursive: true });
  for (const p of programs) {
    if (!existsSync(join(from, p)))
      throw new Error(`build finished but ${p} is missing in ${from}`);
    await copyFile(join(from, p), join(out, "bin", p));
  }
  for (const name of (await readdir(from)).sort()) {
    const path = join(from, name);
    const st = await lstat(path);
    const soname = /^lib.+\.so\.\d+$/.test(name);
    const unversioned = /^lib.+\.so$/.test(name) && !st.isSymbolicLink();
    if (soname || unversioned) await copyFile(await realpath(path), join(out, "lib", name));
  }
}

/**
 * CPU-minutes of compiling, when no build was measured in this cache: the CPU
 * build took ~7 min on this project's 2-core VMs (14 CPU-min; README); CUDA
 * adds nvcc over every kernel for each architecture (many with llama.cpp's
 * default list).
 */
const ASSUMED_CPU_MIN: Record<string, Range> = {
  cpu: [8, 30],
  cuda: [40, 150],
  "cuda-all": [150, 600],
};

/** A build's hours: compile CPU-time over the jobs, from a past build of the same backend when there is one. */
export function estimateBuild(
  p: LlamaBuildParams,
  cpus: number,
  measured: Measurement[],
): Estimate {
  const jobs = Math.max(1, p.jobs ?? cpus ?? 2);
  const flavour = p.backend === "cuda" ? (p.cudaArchitectures ? "cuda" : "cuda-all") : "cpu";
  const past = measured.find(
    (m) =>
      m.what === "build" &&
      m.backend === p.backend &&
      (m.cudaArchitectures ?? null) === (p.cudaArchitectures ?? null) &&
      typeof m.compile_seconds === "number" &&
      typeof m.jobs === "number",
  );
  // configuring and installing: about a minute either way
  const extra: Range = [20, 90];
  let cpuSeconds: Range;
  let basis: string;
  if (past) {
    const s = (past.compile_seconds as number) * (past.jobs as number);
    cpuSeconds = [s * 0.7, s * 1.5];
    basis = `measured: a ${p.backend} build compiled in ${(past.compile_seconds as number).toFixed(0)} s with ${String(past.jobs)} jobs (${past.source ?? "a past run"}); ${jobs} jobs now`;
  } else {
    const m = ASSUMED_CPU_MIN[flavour];
    cpuSeconds = [m[0] * 60, m[1] * 60];
    basis =
      `assumed: ${m[0]}-${m[1]} CPU-minutes of compiling for a ${p.backend} build` +
      `${flavour === "cuda-all" ? " for llama.cpp's default list of CUDA architectures (set cudaArchitectures for fewer)" : ""}` +
      ` (the CPU build took ~7 min on 2 cores here), over ${jobs} jobs; a cached build costs nothing`;
  }
  return {
    hours: [(extra[0] + cpuSeconds[0] / jobs) / 3600, (extra[1] + cpuSeconds[1] / jobs) / 3600],
    device: "cpu",
    usd: null,
    basis: { hours: basis },
    extra: { cpu_hours: [cpuSeconds[0] / 3600, cpuSeconds[1] / 3600] },
    output: {},
  };
}

const llamaBuild: StageKind<LlamaBuildParams> = {
  kind: "llama-build",
  version: "1",
  // The binaries do not depend on how many compilers ran at once.
  unkeyedParams: ["jobs"],
  resources: (p) => ({ cpu: p.jobs ?? 2, memory: 4096 }),
  check: paramIssues,
  fingerprint: async (p) => ({ ...(await buildFingerprint()), hostCpu: hostCpu(p) }),
  estimate: (ctx) => estimateBuild(ctx.params, ctx.resources.cpu, ctx.measured),
  async run(ctx) {
    const p = ctx.params;
    const issues = paramIssues(p);
    if (issues.length) throw new BadStageInput(issues.map((i) => i.message).join("; "));
    if (p.backend === "cuda") {
      const cuda = findCuda();
      if (Array.isArray(cuda)) {
        throw new BadStageInput(`backend: cuda, but this machine lacks: ${cuda.join("; ")}`);
      }
      ctx.log.info({ nvcc: cuda.nvcc }, "CUDA toolkit found");
    }
    const jobs = p.jobs ?? ctx.resources.cpu ?? 2;
    const { src, commit, patches } = await prepareSource(ctx.scratch, ctx.log, ctx.signal);
    const natives = await syncNatives(src);
    const build = join(ctx.scratch, "build");
    const flags = configureFlags(p);
    // A build folder configured with other flags is started afresh: cmake keeps
    // cached values that a changed command line does not always override.
    const flagsFile = join(build, "valley-flags.json");
    if (existsSync(flagsFile) && (await readFile(flagsFile, "utf8")) !== JSON.stringify(flags)) {
      await rm(build, { recursive: true, force: true });
    }
    ctx.log.info({ flags, natives }, "configuring llama.cpp");
    await runCommand("cmake", ["-S", src, "-B", build, ...flags], {
      signal: ctx.signal,
      log: ctx.log,
      env: envStrings(),
    });
    await writeFile(flagsFile, JSON.stringify(flags));
    ctx.log.info({ jobs, targets: LLAMA_TARGETS }, "building llama.cpp");
    const t0 = Date.now();
    await runCommand(
      "cmake",
      ["--build", build, "-j", String(jobs), "--target", ...LLAMA_TARGETS, "valley-native"],
      {
        signal: ctx.signal,
        log: ctx.log,
        env: envStrings(),
        onLine: (line) => {
          const m = /^\[\s*(\d+)%\]/.exec(line);
          if (m) ctx.progress(Number(m[1]), 100, "compiling");
        },
      },
    );
    const nativeList = existsSync(join(build, "valley-native.txt"))
      ? (await readFile(join(build, "valley-native.txt"), "utf8")).split("\n").filter(Boolean)
      : [];
    await install(build, ctx.out, [...LLAMA_TARGETS, ...nativeList]);
    const info = {
      backend: p.backend,
      cudaArchitectures: p.cudaArchitectures ?? null,
      buildType: p.buildType ?? "Release",
      commit,
      ...(await bundleInfo()),
      flags,
      programs: [...LLAMA_TARGETS, ...nativeList],
      natives,
      patches,
    };
    await writeFile(join(ctx.out, "build.json"), JSON.stringify(info, null, 2) + "\n");
    return {
      metrics: { backend: p.backend, commit: commit.slice(0, 12), programs: info.programs.length },
      // what the next build's estimate scales (a partly built folder makes this an underestimate)
      measured: [
        {
          what: "build",
          device: "cpu",
          backend: p.backend,
          cudaArchitectures: p.cudaArchitectures ?? null,
          jobs,
          compile_seconds: (Date.now() - t0) / 1000,
        },
      ],
    };
  },
};

export default llamaBuild;
