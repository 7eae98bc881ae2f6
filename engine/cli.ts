#!/usr/bin/env node
import { InvalidPipeline, UsageError } from "./errors.js";
import { asDiskFull, isDiskFull } from "../cache/disk.js";

const HELP = `valley: knowledge-distillation experiments as content-addressed YAML DAGs

usage: valley <command> [options]

  run [file]            run a pipeline (--only S, --force S, --dry-run, --jobs N,
                        --keep-going, --json, -p name=value; --max-usd X,
                        --max-gpu-hours Y: refuse (exit 2) when the high
                        estimate is over)
  plan [file]           what would run (--why: which key field changed; --json;
                        --estimate: hours, tokens, dollars, memory per instance,
                        with --executor slurm the jobs)
  calibrate [file]      micro-benchmarks of the trainer and llama-server on this
                        machine, kept in the cache for estimates (--gpu, --json)
  status [file]         cached / to run, by stage
  dag [file]            the instance graph (--format mermaid|dot)
  show <instance>       key, params, inputs, outputs, metrics (-f file, --json)
  logs <instance>       the instance's log (-f file)
  gc                    remove what no lockfile or pin references, and leftovers
                        of stopped runs (-f file, --dry-run, --remote R)
  verify                re-hash every stored object; exit 1 if any is corrupt
                        (--remote R: the remote's objects)
  pin <instance>        keep an instance's result through gc
  push|pull [remote]    send/fetch results a remote lacks (-f file: its lockfile;
                        --all: the whole cache; push --repair: replace broken
                        remote records); remotes: cache/remotes/README.md
  export <file|instance> -o bundle.tar   a verified, self-contained bundle
  import bundle.tar     verify a bundle, then add it to the cache (--expect DIGEST)
  schema [kind]         the JSON Schema of pipelines (or of one stage kind)
  grade <problems.jsonl> <answers.jsonl> [--json]
                        grade model answers in the sandbox, without a pipeline
  compare A B           paired Δ pass@1 of two evaluations (instances or
                        samples.jsonl): interval, p-value, counts (--json, --seed)
  lineage <instance> [problem]  from an answer back to the teacher's prompt
                        (--sample k, --rows for a finetune, --json)

file defaults to ./valley.yaml, else the packaged pipelines/demo.yaml.
The cache is .valley/ beside the pipeline, or $VALLEY_CACHE.
Exit codes: 0 success, 1 a stage failed, 2 bad usage or invalid input.`;

type Command = (argv: string[]) => Promise<number>;

const commands: Record<string, () => Promise<Command>> = {
  run: async () => (await import("./commands/run.js")).run,
  plan: async () => (await import("./commands/plan.js")).plan,
  calibrate: async () => (await import("./commands/calibrate.js")).calibrate,
  status: async () => (await import("./commands/plan.js")).status,
  show: async () => (await import("./commands/inspect.js")).show,
  logs: async () => (await import("./commands/inspect.js")).logs,
  dag: async () => (await import("./commands/inspect.js")).dag,
  gc: async () => (await import("./commands/maintain.js")).gc,
  verify: async () => (await import("./commands/maintain.js")).verify,
  pin: async () => (await import("./commands/maintain.js")).pin,
  push: async () => (await import("./commands/remote.js")).push,
  pull: async () => (await import("./commands/remote.js")).pull,
  export: async () => (await import("./commands/remote.js")).exportCommand,
  import: async () => (await import("./commands/remote.js")).importCommand,
  schema: async () => (await import("./commands/schema.js")).schema,
  grade: async () => (await import("./commands/grade.js")).main,
  compare: async () => (await import("./commands/compare.js")).compareCommand,
  lineage: async () => (await import("./commands/lineage.js")).lineage,
};

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === "help" || name === "--help" || name === "-h") {
    process.stdout.write(HELP + "\n");
    return name ? 0 : 2;
  }
  if (name === "--version") {
    process.stdout.write("0.1.0\n");
    return 0;
  }
  const load = commands[name];
  if (!load) {
    process.stderr.write(`valley: unknown command "${name}"\n\n${HELP}\n`);
    return 2;
  }
  try {
    return await (
      await load()
    )(rest);
  } catch (e) {
    if (e instanceof InvalidPipeline) {
      process.stderr.write(e.message + "\n");
      return 2;
    }
    if (e instanceof UsageError) {
      process.stderr.write(`valley ${name}: ${e.message}\n`);
      return 2;
    }
    // A full disk is not a bug: say where and how much, without a stack trace (exit 1).
    if (isDiskFull(e)) {
      process.stderr.write(`valley ${name}: ${(asDiskFull(e, process.cwd()) as Error).message}\n`);
      return 1;
    }
    process.stderr.write(`valley ${name}: ${(e as Error).stack ?? String(e)}\n`);
    return 1;
  }
}

// `valley plan | head`: a closed pipe ends the output quietly, as for any Unix tool.
process.stdout.on("error", (e: NodeJS.ErrnoException) => {
  if (e.code === "EPIPE") process.exit(0);
  throw e;
});

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    process.stderr.write(String(e) + "\n");
    process.exitCode = 1;
  },
);
