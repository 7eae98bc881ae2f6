/**
 * Runs the traces stage in its own process (argv[2] = JSON {params, problems,
 * scratch}), so a test can SIGKILL it mid-generation. Without arguments (the
 * test runner loads every file under test/) it does nothing.
 */
import { artifact, makeCtx } from "./data-ctx.js";

if (process.argv[2]) {
  const { default: traces } = await import("../../stages/traces/index.js");
  const a = JSON.parse(process.argv[2]) as {
    params: Record<string, unknown>;
    problems: string;
    scratch: string;
  };
  const ctx = makeCtx(
    a.params as never,
    { problems: artifact(a.problems) },
    { scratch: a.scratch },
  );
  await traces.run(ctx);
  process.stdout.write("done\n");
}
