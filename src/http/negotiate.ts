/**
 * Content negotiation on an `Accept` header (RFC 9110 §12.5.1), for the few answers that come in
 * more than one format. Only media types the client names explicitly count (wildcards express no
 * preference between our formats); each offer gets the highest quality among its mentions; an
 * offer with q = 0 is refused. The best offer wins, ties and no match go to `fallback`'s order.
 */
export interface Offer<T extends string> {
  /** Media type, lower case, without parameters. */
  type: string;
  value: T;
}

export function negotiate<T extends string>(accept: string | undefined, offers: readonly Offer<T>[], fallback: T): T {
  if (!accept) return fallback;
  const quality = new Map<string, number>();
  for (const part of accept.split(',')) {
    const [range, ...params] = part.split(';');
    const type = range.trim().toLowerCase();
    if (!type || type.includes('*')) continue;
    let q = 1;
    for (const p of params) {
      const [k, v] = p.split('=');
      if (k?.trim().toLowerCase() === 'q') {
        const n = Number(v?.trim());
        q = Number.isFinite(n) ? Math.min(1, Math.max(0, n)) : 0;
      }
    }
    quality.set(type, Math.max(quality.get(type) ?? 0, q));
  }
  let best: T | undefined;
  let bestQ = 0;
  const rank = (v: T) => (v === fallback ? 0 : 1);
  for (const o of offers) {
    const q = quality.get(o.type) ?? 0;
    if (q > bestQ || (q === bestQ && q > 0 && best !== undefined && rank(o.value) < rank(best))) {
      best = o.value;
      bestQ = q;
    }
  }
  return best ?? fallback;
}
