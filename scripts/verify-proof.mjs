#!/usr/bin/env node
// Standalone verifier of a transaction-log inclusion proof. Plain JavaScript, node:crypto only,
// no project code, so an auditor can read all of it.
//
//   npm run verify-proof -- proof.json [--root <hex merkle root read from the chain>]
//
// proof.json is the body of GET /api/transactions/:id/proof. Without --root the file's own
// anchor.merkleRoot is the root checked against; an auditor passes the root read from the chain.
// Exit code 0: the record is included under the root. 1: it is not. 2: bad usage or input.
import { Buffer } from 'node:buffer';
import console from 'node:console';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import process from 'node:process';

const HASHED_FIELDS = ['sequence', 'id', 'transactionId', 'nodeId', 'type', 'timestamp', 'market', 'energyKwh', 'powerKw', 'priceEurMwh', 'amountEur', 'status', 'relatesTo', 'details', 'recordedAt'];
const HEX64 = /^[0-9a-f]{64}$/;

function usage(message) {
  console.error(`verify-proof: ${message}\nusage: npm run verify-proof -- proof.json [--root <hex>]`);
  process.exit(2);
}

// RFC 8785 (JCS) canonical JSON: sorted keys (UTF-16 code units), no whitespace, ECMAScript number and string forms.
function canonical(value) {
  if (value === null || typeof value === 'boolean' || typeof value === 'string') return JSON.stringify(value);
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw new Error('non-finite number in record');
    return JSON.stringify(value);
  }
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  if (typeof value === 'object') {
    return `{${Object.keys(value).sort().map((k) => `${JSON.stringify(k)}:${canonical(value[k])}`).join(',')}}`;
  }
  throw new Error(`unexpected ${typeof value} in record`);
}

const sha256 = (...parts) => {
  const h = createHash('sha256');
  for (const p of parts) h.update(p);
  return h.digest();
};

const args = process.argv.slice(2);
let file;
let root;
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--root') root = args[++i];
  else if (!file) file = args[i];
  else usage(`unexpected argument ${args[i]}`);
}
if (!file) usage('no proof file given');
if (root !== undefined && !HEX64.test(root.toLowerCase())) usage('--root must be 64 hex characters');

let doc;
try {
  doc = JSON.parse(readFileSync(file, 'utf8'));
} catch (err) {
  usage(`cannot read ${file}: ${err.message}`);
}
const { record, proof, anchor } = doc ?? {};
if (!record || !proof || !Array.isArray(proof.siblings) || !anchor) usage('the file is not a proof (needs record, proof.siblings, anchor)');

const failures = [];

// 1. The record's hash: SHA-256 over prevHash (64 hex characters) followed by the canonical JSON of its hashed fields.
const hashed = {};
for (const f of HASHED_FIELDS) hashed[f] = record[f] === undefined ? null : record[f];
const recomputed = sha256(Buffer.from(String(record.prevHash) + canonical(hashed), 'utf8')).toString('hex');
if (recomputed !== record.hash) failures.push(`record hash: recomputed ${recomputed}, the record says ${record.hash}`);
console.log(`record ${record.id} (sequence ${record.sequence}) hash ${recomputed}`);

// 2. The leaf: SHA-256(0x00 || the 32 bytes of the record hash).
let acc = sha256(Buffer.from([0]), Buffer.from(recomputed, 'hex'));

// 3. Fold the siblings from the leaf up: node = SHA-256(0x01 || left || right).
for (const [i, s] of proof.siblings.entries()) {
  if (!HEX64.test(String(s.hash))) usage(`sibling ${i} is not a 64-hex hash`);
  const sib = Buffer.from(s.hash, 'hex');
  if (s.position === 'left') acc = sha256(Buffer.from([1]), sib, acc);
  else if (s.position === 'right') acc = sha256(Buffer.from([1]), acc, sib);
  else usage(`sibling ${i} has position ${s.position} (left or right expected)`);
}
const computedRoot = acc.toString('hex');

// 4. Compare with the anchored root (from the chain when --root is given).
const expectedRoot = (root ?? anchor.merkleRoot ?? '').toLowerCase();
if (computedRoot !== expectedRoot) failures.push(`Merkle root: computed ${computedRoot}, expected ${expectedRoot}`);
if (root !== undefined && anchor.merkleRoot && root.toLowerCase() !== String(anchor.merkleRoot).toLowerCase()) {
  failures.push(`the proof file's anchor root ${anchor.merkleRoot} differs from the root given with --root`);
}
if (!(record.sequence >= anchor.fromSequence && record.sequence <= anchor.toSequence)) {
  failures.push(`sequence ${record.sequence} is outside the anchor's range ${anchor.fromSequence}–${anchor.toSequence}`);
}

console.log(`merkle root ${computedRoot} (anchor ${anchor.anchorId}, sequences ${anchor.fromSequence}–${anchor.toSequence}${anchor.network ? `, ${anchor.network} tx ${anchor.txHash} block ${anchor.blockNumber}` : ', not yet recorded on chain'})`);
if (failures.length > 0) {
  for (const f of failures) console.error(`FAIL: ${f}`);
  process.exit(1);
}
console.log('OK: the record is included under the root');
