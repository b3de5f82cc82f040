import { createHash } from 'node:crypto';

/**
 * Merkle trees over record hashes, with RFC 6962 domain separation:
 *   leaf = SHA-256(0x00 ‖ record hash bytes)         (the record hash as 32 raw bytes)
 *   node = SHA-256(0x01 ‖ left ‖ right)
 * Leaves are in sequence order. Levels are built pairwise left to right; an odd node at the end
 * of a level is promoted unchanged to the next level (never duplicated, so no two different leaf
 * lists share a root). This is the same tree as RFC 6962's Merkle Tree Hash.
 */

const LEAF_PREFIX = Buffer.from([0]);
const NODE_PREFIX = Buffer.from([1]);

export function leafHash(recordHashHex: string): Buffer {
  return createHash('sha256').update(LEAF_PREFIX).update(Buffer.from(recordHashHex, 'hex')).digest();
}

export function nodeHash(left: Buffer, right: Buffer): Buffer {
  return createHash('sha256').update(NODE_PREFIX).update(left).update(right).digest();
}

/** A sibling on the path from a leaf to the root: `position` says on which side it is hashed. */
export interface ProofStep {
  position: 'left' | 'right';
  /** 64 lowercase hex characters. */
  hash: string;
}

/**
 * Builds the root incrementally from leaves in order, holding only O(log n) subtree roots:
 * equal-height perfect subtrees merge as they complete; at the end the remaining ones fold
 * right to left, which is exactly what promoting odd nodes level by level produces.
 */
export class MerkleAccumulator {
  private readonly stack: { height: number; hash: Buffer }[] = [];
  count = 0;

  addRecordHash(recordHashHex: string): void {
    let cur = { height: 0, hash: leafHash(recordHashHex) };
    this.count++;
    for (let top = this.stack[this.stack.length - 1]; top && top.height === cur.height; top = this.stack[this.stack.length - 1]) {
      this.stack.pop();
      cur = { height: cur.height + 1, hash: nodeHash(top.hash, cur.hash) };
    }
    this.stack.push(cur);
  }

  /** Root as hex; throws on an empty tree (there is nothing to anchor). */
  root(): string {
    if (this.stack.length === 0) throw new Error('empty Merkle tree');
    let acc = this.stack[this.stack.length - 1].hash;
    for (let i = this.stack.length - 2; i >= 0; i--) acc = nodeHash(this.stack[i].hash, acc);
    return acc.toString('hex');
  }
}

export function merkleRoot(recordHashes: readonly string[]): string {
  const acc = new MerkleAccumulator();
  for (const h of recordHashes) acc.addRecordHash(h);
  return acc.root();
}

/** Inclusion proof of leaf `index` (0-based) among `recordHashes`: siblings from the leaf up. */
export function inclusionProof(recordHashes: readonly string[], index: number): ProofStep[] {
  if (!Number.isInteger(index) || index < 0 || index >= recordHashes.length) throw new RangeError('leaf index out of range');
  let level = recordHashes.map(leafHash);
  let i = index;
  const steps: ProofStep[] = [];
  while (level.length > 1) {
    const next: Buffer[] = [];
    for (let j = 0; j < level.length; j += 2) next.push(j + 1 < level.length ? nodeHash(level[j], level[j + 1]) : level[j]);
    if (i % 2 === 1) steps.push({ position: 'left', hash: level[i - 1].toString('hex') });
    else if (i + 1 < level.length) steps.push({ position: 'right', hash: level[i + 1].toString('hex') });
    // else: the odd last node is promoted, no sibling at this level
    level = next;
    i = Math.floor(i / 2);
  }
  return steps;
}

/** Folds a proof: the root (hex) that a record hash and its siblings imply. */
export function rootFromProof(recordHashHex: string, steps: readonly ProofStep[]): string {
  let acc = leafHash(recordHashHex);
  for (const s of steps) {
    const sib = Buffer.from(s.hash, 'hex');
    acc = s.position === 'left' ? nodeHash(sib, acc) : nodeHash(acc, sib);
  }
  return acc.toString('hex');
}
