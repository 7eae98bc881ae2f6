import { createReadStream, createWriteStream } from "node:fs";
import { pipeline } from "node:stream/promises";
import type { Readable } from "node:stream";
import {
  S3Client,
  HeadObjectCommand,
  GetObjectCommand,
  PutObjectCommand,
  CreateMultipartUploadCommand,
  UploadPartCommand,
  CompleteMultipartUploadCommand,
  AbortMultipartUploadCommand,
  DeleteObjectCommand,
  ListObjectsV2Command,
  type S3ClientConfig,
} from "@aws-sdk/client-s3";
import { type Backend, RemoteNotFound, mapLimit } from "./backend.js";

export interface S3Options {
  bucket: string;
  /** Key prefix inside the bucket ("" or "team/valley"). */
  prefix: string;
  /** For MinIO, Ceph, R2: e.g. http://127.0.0.1:9000 or https://<account>.r2.cloudflarestorage.com. */
  endpoint?: string;
  /** Default $AWS_REGION, else us-east-1 (R2 wants "auto"). */
  region?: string;
  /** Bucket in the path rather than the host name (MinIO, Ceph, s3rver need it). */
  pathStyle?: boolean;
  /** Names of the environment variables holding the credentials (never the secrets themselves). */
  accessKeyIdEnv?: string;
  secretAccessKeyEnv?: string;
  /**
   * Files larger than this go up in parts of this size (multipart upload):
   * a single PUT stops at 5 GiB, and a merged F32 student is 30 GB. Default
   * 64 MiB; at least 5 MiB (S3's smallest part but the last).
   */
  partSizeBytes?: number;
}

const MiB = 1024 * 1024;
export const DEFAULT_PART_SIZE = 64 * MiB;
/** S3 allows 10,000 parts per object. */
const MAX_PARTS = 10_000;
/** Tries per part (after the SDK's own retries of the request). */
const PART_TRIES = 3;

// The SDK warns on Node 20 about releases after January 2027; valley pins
// its SDK version exactly and supports Node 20, so the warning only confuses.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= "true";

function isNotFound(e: unknown): boolean {
  const err = e as { name?: string; $metadata?: { httpStatusCode?: number } };
  return (
    err.name === "NotFound" || err.name === "NoSuchKey" || err.$metadata?.httpStatusCode === 404
  );
}

/** s3://bucket/prefix on AWS or any S3-compatible server. */
export class S3Backend implements Backend {
  private client: S3Client;
  /**
   * For part uploads: no SDK retries, whose replay of a consumed stream body
   * can fail or hang; uploadParts retries each part with a fresh stream.
   */
  private partClient: S3Client;

  constructor(
    readonly opts: S3Options,
    readonly url: string,
  ) {
    const config: S3ClientConfig = {
      region:
        opts.region ?? process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION ?? "us-east-1",
      forcePathStyle: opts.pathStyle ?? false,
      // The SDK's default CRC trailers (aws-chunked uploads) are not understood
      // by several S3-compatible servers; valley checks sha256 digests itself.
      requestChecksumCalculation: "WHEN_REQUIRED",
      responseChecksumValidation: "WHEN_REQUIRED",
    };
    if (opts.endpoint) config.endpoint = opts.endpoint;
    const id = opts.accessKeyIdEnv ? process.env[opts.accessKeyIdEnv] : undefined;
    const secret = opts.secretAccessKeyEnv ? process.env[opts.secretAccessKeyEnv] : undefined;
    if (id && secret) config.credentials = { accessKeyId: id, secretAccessKey: secret };
    this.client = new S3Client(config);
    this.partClient = new S3Client({ ...config, maxAttempts: 1 });
  }

  private key(path: string): string {
    return this.opts.prefix ? `${this.opts.prefix.replace(/\/+$/, "")}/${path}` : path;
  }

  async stat(paths: string[]): Promise<Map<string, number>> {
    const out = new Map<string, number>();
    await mapLimit(paths, 16, async (p) => {
      try {
        const r = await this.client.send(
          new HeadObjectCommand({ Bucket: this.opts.bucket, Key: this.key(p) }),
        );
        out.set(p, r.ContentLength ?? 0);
      } catch (e) {
        if (!isNotFound(e)) throw e;
      }
    });
    return out;
  }

  async list(dir: string): Promise<{ path: string; size: number }[]> {
    const out: { path: string; size: number }[] = [];
    const strip = this.key("").length;
    let token: string | undefined;
    do {
      const r = await this.client.send(
        new ListObjectsV2Command({
          Bucket: this.opts.bucket,
          Prefix: this.key(dir + "/"),
          ContinuationToken: token,
        }),
      );
      for (const o of r.Contents ?? [])
        if (o.Key) out.push({ path: o.Key.slice(strip), size: o.Size ?? 0 });
      token = r.IsTruncated ? r.NextContinuationToken : undefined;
    } while (token);
    return out.sort((a, b) => (a.path < b.path ? -1 : 1));
  }

  async read(path: string): Promise<Readable> {
    try {
      const r = await this.client.send(
        new GetObjectCommand({ Bucket: this.opts.bucket, Key: this.key(path) }),
      );
      return r.Body as Readable;
    } catch (e) {
      if (isNotFound(e)) throw new RemoteNotFound(path, this.url);
      throw e;
    }
  }

  async upload(localFile: string, path: string, size: number): Promise<void> {
    // An object becomes visible only once complete (a PUT, or the completion
    // of a multipart upload), so no temporary name is needed.
    const partSize = Math.max(
      this.opts.partSizeBytes ?? DEFAULT_PART_SIZE,
      Math.ceil(size / MAX_PARTS),
    );
    if (size > partSize) await this.uploadParts(localFile, path, size, partSize);
    else
      await this.client.send(
        new PutObjectCommand({
          Bucket: this.opts.bucket,
          Key: this.key(path),
          Body: createReadStream(localFile),
          ContentLength: size,
        }),
      );
    const got = (await this.stat([path])).get(path);
    if (got !== size)
      throw new Error(`${this.url}: ${got ?? 0} of ${size} bytes of ${path} arrived`);
  }

  /**
   * Multipart upload, 4 parts at a time. Each part is retried on its own,
   * each try with the file opened afresh: one throttled part does not
   * restart a 30 GB upload. After a part
   * fails for good no new part starts, the parts in flight are waited for,
   * and then the upload is aborted, so no stored part outlives it.
   */
  private async uploadParts(
    localFile: string,
    path: string,
    size: number,
    partSize: number,
  ): Promise<void> {
    const target = { Bucket: this.opts.bucket, Key: this.key(path) };
    const { UploadId } = await this.client.send(new CreateMultipartUploadCommand(target));
    if (!UploadId) throw new Error(`${this.url}: the server gave no upload id for ${path}`);
    const n = Math.ceil(size / partSize);
    const parts: { ETag: string; PartNumber: number }[] = new Array(n);
    let failure: unknown;
    let next = 0;
    const sendPart = async (i: number): Promise<void> => {
      const start = i * partSize;
      const end = Math.min(size, start + partSize);
      for (let attempt = 1; ; attempt++) {
        try {
          const r = await this.partClient.send(
            new UploadPartCommand({
              ...target,
              UploadId,
              PartNumber: i + 1,
              Body: createReadStream(localFile, { start, end: end - 1 }),
              ContentLength: end - start,
            }),
          );
          if (!r.ETag) throw new Error(`${this.url}: no ETag for part ${i + 1} of ${path}`);
          parts[i] = { ETag: r.ETag, PartNumber: i + 1 };
          return;
        } catch (e) {
          if (attempt >= PART_TRIES || failure !== undefined) throw e;
          await new Promise((r) => setTimeout(r, 250 * 4 ** attempt));
        }
      }
    };
    const worker = async () => {
      while (failure === undefined && next < n) {
        const i = next++;
        try {
          await sendPart(i);
        } catch (e) {
          failure ??= e;
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(4, n) }, worker));
    if (failure === undefined) {
      try {
        await this.client.send(
          new CompleteMultipartUploadCommand({
            ...target,
            UploadId,
            MultipartUpload: { Parts: parts },
          }),
        );
        return;
      } catch (e) {
        failure = e;
      }
    }
    await this.client
      .send(new AbortMultipartUploadCommand({ ...target, UploadId }))
      .catch(() => undefined);
    throw failure;
  }

  async download(path: string, localFile: string): Promise<void> {
    await pipeline(await this.read(path), createWriteStream(localFile));
  }

  async delete(path: string): Promise<void> {
    await this.client.send(
      new DeleteObjectCommand({ Bucket: this.opts.bucket, Key: this.key(path) }),
    );
  }

  async close(): Promise<void> {
    this.client.destroy();
    this.partClient.destroy();
  }
}
