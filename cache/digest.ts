import { createHash } from "node:crypto";

/** A content address: `sha256:` followed by 64 lowercase hex digits. */
export type Digest = string & { readonly __brand: "Digest" };

/**
 * The two roles a digest plays, kept apart by the compiler (Bazel's model):
 * an ActionKey names an action record in actions/ (sha256 over an instance's
 * key fields, engine/key.ts); a TreeDigest names an output tree (sha256 over
 * its manifest) in trees/. Both are Digests (digestHex, objects), but one
 * cannot be passed where the other is expected.
 */
export type ActionKey = Digest & { readonly __role: "ActionKey" };
export type TreeDigest = Digest & { readonly __role: "TreeDigest" };

const DIGEST_RE = /^sha256:[0-9a-f]{64}$/;

export function isDigest(s: unknown): s is Digest {
  return typeof s === "string" && DIGEST_RE.test(s);
}

export function asDigest(s: string): Digest {
  if (!isDigest(s)) throw new Error(`not a sha256 digest: ${JSON.stringify(s)}`);
  return s;
}

/** A digest read from a file or a command line, as the key of an action record. */
export function asActionKey(s: string): ActionKey {
  return asDigest(s) as ActionKey;
}

/** A digest read from a file or a command line, as an output tree. */
export function asTreeDigest(s: string): TreeDigest {
  return asDigest(s) as TreeDigest;
}

/** The 64 hex digits of a digest, used for file names in the store. */
export function digestHex(d: Digest): string {
  return d.slice(7);
}

export function sha256Bytes(data: string | Uint8Array): Digest {
  return ("sha256:" + createHash("sha256").update(data).digest("hex")) as Digest;
}

/**
 * JSON with object keys sorted at every level, no whitespace. Two values that
 * are equal as data give the same string, whatever order their keys were
 * written in: this is what keys are hashed over.
 */
export function canonicalJson(value: unknown): string {
  // Hot path (every key of every instance): string building without
  // intermediate arrays.
  if (value === null || value === undefined) return "null";
  switch (typeof value) {
    case "string":
      return JSON.stringify(value);
    case "number":
      if (!Number.isFinite(value)) throw new Error(`cannot hash non-finite number ${value}`);
      return JSON.stringify(value);
    case "boolean":
      return value ? "true" : "false";
    case "object":
      break;
    default:
      return JSON.stringify(value) ?? "null";
  }
  if (Array.isArray(value)) {
    let out = "[";
    for (let i = 0; i < value.length; i++) out += (i ? "," : "") + canonicalJson(value[i]);
    return out + "]";
  }
  const obj = value as Record<string, unknown>;
  const keys = Object.keys(obj);
  // Array.prototype.sort allocates a work area on every call, and a no-op
  // run of 2,001 instances spent a tenth of its allocations there: the
  // small objects that keys are made of are sorted in place.
  if (keys.length > 16) keys.sort();
  else
    for (let i = 1; i < keys.length; i++) {
      const k = keys[i];
      let j = i - 1;
      for (; j >= 0 && keys[j] > k; j--) keys[j + 1] = keys[j];
      keys[j + 1] = k;
    }
  let out = "{";
  let first = true;
  for (const k of keys) {
    const v = obj[k];
    if (v === undefined) continue;
    out += (first ? "" : ",") + JSON.stringify(k) + ":" + canonicalJson(v);
    first = false;
  }
  return out + "}";
}

export function hashJson(value: unknown): Digest {
  return sha256Bytes(canonicalJson(value));
}
