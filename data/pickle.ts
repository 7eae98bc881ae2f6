/**
 * A pickle reader that never executes anything: it walks the opcodes and
 * accepts only those that can build a single plain `str` (what LiveCodeBench
 * stores in its private tests). Any opcode that could import or call code
 * (GLOBAL, STACK_GLOBAL, REDUCE, INST, OBJ, NEWOBJ, BUILD, EXT*, …) and any
 * other value type is refused, so a malicious file cannot run code.
 */
export class PickleError extends Error {
  override name = "PickleError";
}

const OPCODE_NAMES: Record<number, string> = {
  0x63: "GLOBAL",
  0x93: "STACK_GLOBAL",
  0x52: "REDUCE",
  0x69: "INST",
  0x6f: "OBJ",
  0x81: "NEWOBJ",
  0x92: "NEWOBJ_EX",
  0x62: "BUILD",
  0x82: "EXT1",
  0x83: "EXT2",
  0x84: "EXT4",
  0x50: "PERSID",
  0x51: "BINPERSID",
  0x28: "MARK",
  0x74: "TUPLE",
  0x85: "TUPLE1",
  0x86: "TUPLE2",
  0x87: "TUPLE3",
  0x29: "EMPTY_TUPLE",
  0x5d: "EMPTY_LIST",
  0x7d: "EMPTY_DICT",
  0x4b: "BININT1",
  0x4a: "BININT",
  0x4d: "BININT2",
  0x43: "SHORT_BINBYTES",
  0x42: "BINBYTES",
  0x55: "SHORT_BINSTRING",
  0x54: "BINSTRING",
  0x68: "BINGET",
  0x6a: "LONG_BINGET",
  0x67: "GET",
};

/** Decodes a pickle holding one str. Throws PickleError on anything else. */
export function unpickleString(data: Uint8Array): string {
  const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  const stack: string[] = [];
  let pos = 0;
  const need = (n: number, what: string) => {
    if (pos + n > buf.length) throw new PickleError(`truncated pickle in ${what} at byte ${pos}`);
  };
  const readLen = (bytes: 1 | 4 | 8, what: string): number => {
    need(bytes, what);
    let n: number;
    if (bytes === 1) n = buf.readUInt8(pos);
    else if (bytes === 4) n = buf.readUInt32LE(pos);
    else {
      const big = buf.readBigUInt64LE(pos);
      if (big > BigInt(Number.MAX_SAFE_INTEGER))
        throw new PickleError(`length too large in ${what}`);
      n = Number(big);
    }
    pos += bytes;
    return n;
  };
  const readStr = (len: number, what: string) => {
    need(len, what);
    const s = buf.toString("utf8", pos, pos + len);
    pos += len;
    stack.push(s);
  };
  while (pos < buf.length) {
    const op = buf[pos++];
    switch (op) {
      case 0x80: // PROTO n
        readLen(1, "PROTO");
        break;
      case 0x95: // FRAME len (a hint only)
        readLen(8, "FRAME");
        break;
      case 0x8c: // SHORT_BINUNICODE
        readStr(readLen(1, "SHORT_BINUNICODE"), "SHORT_BINUNICODE");
        break;
      case 0x58: // BINUNICODE
        readStr(readLen(4, "BINUNICODE"), "BINUNICODE");
        break;
      case 0x8d: // BINUNICODE8
        readStr(readLen(8, "BINUNICODE8"), "BINUNICODE8");
        break;
      case 0x94: // MEMOIZE: the memo is only needed by GET opcodes, which we refuse
        break;
      case 0x71: // BINPUT
        readLen(1, "BINPUT");
        break;
      case 0x72: // LONG_BINPUT
        readLen(4, "LONG_BINPUT");
        break;
      case 0x2e: // STOP
        if (stack.length !== 1)
          throw new PickleError(`pickle ends with ${stack.length} values, expected one str`);
        if (pos !== buf.length)
          throw new PickleError(`${buf.length - pos} trailing bytes after STOP`);
        return stack[0];
      default: {
        const name = OPCODE_NAMES[op] ?? `0x${op.toString(16).padStart(2, "0")}`;
        throw new PickleError(
          `refused pickle opcode ${name} at byte ${pos - 1}: only a plain str is accepted (nothing was executed)`,
        );
      }
    }
  }
  throw new PickleError("pickle has no STOP opcode");
}
