/**
 * Before a CUDA build: is a CUDA toolkit with cuBLAS here? A CUDA build that
 * lacks them fails minutes in (at cmake configure: "Unable to find
 * cublas_v2.h"); this says what is missing at once.
 */
import { existsSync, readdirSync, realpathSync } from "node:fs";
import { delimiter, dirname, join } from "node:path";

export interface CudaToolkit {
  nvcc: string;
  root: string;
}

function which(cmd: string, env: NodeJS.ProcessEnv): string | undefined {
  for (const dir of (env.PATH ?? "").split(delimiter)) {
    if (dir && existsSync(join(dir, cmd))) return join(dir, cmd);
  }
  return undefined;
}

function hasFile(dirs: string[], test: (name: string) => boolean): string | undefined {
  for (const d of dirs) {
    try {
      if (readdirSync(d).some(test)) return d;
    } catch {
      // missing folder: try the next
    }
  }
  return undefined;
}

/** Returns the toolkit, or the list of what is missing (each item says where it looked). */
export function findCuda(env: NodeJS.ProcessEnv = process.env): CudaToolkit | string[] {
  const candidates = [
    env.CUDACXX,
    which("nvcc", env),
    env.CUDA_HOME && join(env.CUDA_HOME, "bin", "nvcc"),
    env.CUDA_PATH && join(env.CUDA_PATH, "bin", "nvcc"),
    "/usr/local/cuda/bin/nvcc",
  ].filter((p): p is string => !!p);
  const nvcc = candidates.find((p) => existsSync(p));
  if (!nvcc) {
    return [
      "nvcc (the CUDA compiler): not in PATH, CUDACXX, CUDA_HOME or /usr/local/cuda/bin",
      "cuBLAS (cublas_v2.h and libcublas.so), which comes with the CUDA toolkit",
    ];
  }
  const root = dirname(dirname(realpathSync(nvcc)));
  const arch = process.arch === "arm64" ? "sbsa-linux" : "x86_64-linux";
  const includeDirs = [
    join(root, "include"),
    join(root, "targets", arch, "include"),
    "/usr/include",
    "/usr/local/cuda/include",
  ];
  const libDirs = [
    join(root, "lib64"),
    join(root, "lib"),
    join(root, "targets", arch, "lib"),
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/local/cuda/lib64",
  ];
  const missing: string[] = [];
  if (!hasFile(includeDirs, (n) => n === "cublas_v2.h")) {
    missing.push(`cuBLAS headers (cublas_v2.h, looked in ${includeDirs.join(", ")})`);
  }
  if (!hasFile(libDirs, (n) => n.startsWith("libcublas.so"))) {
    missing.push(`cuBLAS library (libcublas.so, looked in ${libDirs.join(", ")})`);
  }
  if (!hasFile(libDirs, (n) => n.startsWith("libcudart"))) {
    missing.push(`CUDA runtime (libcudart, looked in ${libDirs.join(", ")})`);
  }
  return missing.length ? missing : { nvcc, root };
}
