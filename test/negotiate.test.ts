import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { negotiate, type Offer } from '../src/http/negotiate.js';

describe('Accept negotiation', () => {
  const offers: Offer<'csv' | 'ndjson'>[] = [
    { type: 'text/csv', value: 'csv' },
    { type: 'application/x-ndjson', value: 'ndjson' },
    { type: 'application/jsonl', value: 'ndjson' },
  ];
  test('the offer with the highest quality wins; wildcards, q = 0, ties and no match give the fallback', () => {
    const cases: [string | undefined, 'csv' | 'ndjson'][] = [
      [undefined, 'csv'],
      ['', 'csv'],
      ['application/x-ndjson', 'ndjson'],
      ['application/jsonl', 'ndjson'],
      ['text/csv;q=0.2, application/x-ndjson;q=0.3', 'ndjson'],
      ['text/csv, application/x-ndjson', 'csv'],
      ['application/x-ndjson;q=0', 'csv'],
      ['*/*', 'csv'],
      ['application/*', 'csv'],
      ['application/x-ndjson;q=bogus', 'csv'],
      ['application/x-ndjson; charset=utf-8 ; q=0.8, text/html', 'ndjson'],
    ];
    for (const [accept, expected] of cases) assert.equal(negotiate(accept, offers, 'csv'), expected, String(accept));
  });
});
