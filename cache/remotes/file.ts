import {
  createReadStream,
  copyFileSync,
  chmodSync,
  constants,
  mkdirSync,
  readdirSync,
  renameSync,
  statSync,
  unlinkSync,
  existsSync,
} from "node:fs";
import { join, dirname } from "node:path";
import { randomBytes } from "node:crypto";
import type { Readable } from "node:stream";
import { type Backend, RemoteNotFound, RemoteConfigError } from "./backend.js";

/** file:///path: a folder (typically a network mount) laid out like a store. */
export class FileBackend implements Backend {
  constructor(
    readonly root: string,
    readonly url = `file://${root}`,
  ) {
    try {
      mkdirSync(join(root, "tmp"), { recursive: true });
    } catch (e) {
      throw new RemoteConfigError(`${url}: cannot create ${root}: ${(e as Error).message}`);
    }
  }

  async stat(paths: string[]): Promise<Map<string, number>> {
    const out = new Map<string, number>();
    for (const p of paths) {
      try {
        out.set(p, statSync(join(this.root, p)).size);
      } catch {
        // absent
      }
    }
    return out;
  }

  async list(dir: string): Promise<{ path: string; size: number }[]> {
    const out: { path: string; size: number }[] = [];
    const walk = (rel: string) => {
      let names: string[];
      try {
        names = readdirSync(join(this.root, rel)).sort();
      } catch {
        return;
      }
      for (const n of names) {
        const r = `${rel}/${n}`;
        const st = statSync(join(this.root, r));
        if (st.isDirectory()) walk(r);
        else out.push({ path: r, size: st.size });
      }
    };
    walk(dir);
    return out;
  }

  async read(path: string): Promise<Readable> {
    const abs = join(this.root, path);
    if (!existsSync(abs)) throw new RemoteNotFound(path, this.url);
    return createReadStream(abs, { highWaterMark: 1 << 20 });
  }

  async upload(localFile: string, path: string, size: number): Promise<void> {
    const tmp = join(this.root, "tmp", `${process.pid}-${randomBytes(6).toString("hex")}`);
    try {
      // A reflink where the filesystem offers one, else a plain copy.
      copyFileSync(localFile, tmp, constants.COPYFILE_FICLONE);
      chmodSync(tmp, 0o444);
      const got = statSync(tmp).size;
      if (got !== size) throw new Error(`${this.url}: wrote ${got} of ${size} bytes of ${path}`);
      mkdirSync(dirname(join(this.root, path)), { recursive: true });
      renameSync(tmp, join(this.root, path));
    } catch (e) {
      try {
        unlinkSync(tmp);
      } catch {
        // never created
      }
      throw e;
    }
  }

  async download(path: string, localFile: string): Promise<void> {
    try {
      copyFileSync(join(this.root, path), localFile, constants.COPYFILE_FICLONE);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") throw new RemoteNotFound(path, this.url);
      throw e;
    }
  }

  async delete(path: string): Promise<void> {
    try {
      unlinkSync(join(this.root, path));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw e;
    }
  }

  async close(): Promise<void> {}
}
