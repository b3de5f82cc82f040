-- The transaction log: append-only, hash-chained (see docs/transactions.md for the canonical form).
-- sequence is assigned by the service under the chain-head row lock, so it is gap-free.
CREATE TABLE transactions (
  sequence        bigint PRIMARY KEY CHECK (sequence > 0),
  id              uuid NOT NULL UNIQUE,
  -- client idempotency key; unique over the retained log
  transaction_id  text UNIQUE,
  node_id         text NOT NULL,
  type            text NOT NULL CHECK (type IN ('dispatch','bid','settlement','adjustment')),
  ts              timestamptz NOT NULL,
  market          text,
  energy_kwh      double precision,
  power_kw        double precision,
  price_eur_mwh   double precision,
  amount_eur      double precision,
  status          text NOT NULL CHECK (status IN ('pending','accepted','rejected','confirmed','settled','failed')),
  relates_to      uuid,
  details         jsonb,
  recorded_at     timestamptz NOT NULL,
  prev_hash       text NOT NULL CHECK (prev_hash ~ '^[0-9a-f]{64}$'),
  hash            text NOT NULL CHECK (hash ~ '^[0-9a-f]{64}$'),
  -- sha256 of the canonical request body: "same body" for idempotent retries
  request_hash    text NOT NULL
);
-- Per-node listing, newest first (keyset on (ts, sequence)).
CREATE INDEX transactions_node_ts ON transactions (node_id, ts DESC, sequence DESC);
-- Analytics: settlements per node and period.
CREATE INDEX transactions_node_type_ts ON transactions (node_id, type, ts);

-- The tail of the chain, one row. Appends lock it FOR UPDATE, which serialises every writer of
-- every instance; it also survives pruning (an empty table still knows where the chain ended).
CREATE TABLE transaction_chain_head (
  singleton         boolean PRIMARY KEY DEFAULT true CHECK (singleton),
  last_sequence     bigint NOT NULL DEFAULT 0,
  last_hash         text NOT NULL DEFAULT repeat('0', 64),
  last_recorded_at  timestamptz
);
INSERT INTO transaction_chain_head DEFAULT VALUES;

-- Where retention stopped: the last pruned record's sequence and hash, from which verify resumes.
CREATE TABLE transaction_checkpoint (
  singleton         boolean PRIMARY KEY DEFAULT true CHECK (singleton),
  last_sequence     bigint NOT NULL,
  last_hash         text NOT NULL,
  last_recorded_at  timestamptz NOT NULL,
  pruned_at         timestamptz NOT NULL DEFAULT now(),
  pruned_total      bigint NOT NULL DEFAULT 0
);

-- Merkle batches of consecutive sequences, contiguous from sequence 1.
CREATE TABLE transaction_anchors (
  anchor_id          uuid PRIMARY KEY,
  from_sequence      bigint NOT NULL UNIQUE,
  to_sequence        bigint NOT NULL UNIQUE CHECK (to_sequence >= from_sequence),
  merkle_root        text NOT NULL CHECK (merkle_root ~ '^[0-9a-f]{64}$'),
  created_at         timestamptz NOT NULL DEFAULT now(),
  network            text,
  tx_hash            text,
  block_number       bigint,
  chain_recorded_at  timestamptz
);

-- The log refuses UPDATE and DELETE. The only exception is the retention job, which deletes
-- (never updates) inside a transaction that has set `vpp.transactions_prune = on`.
CREATE FUNCTION transactions_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'DELETE' AND current_setting('vpp.transactions_prune', true) = 'on' THEN
    RETURN OLD;
  END IF;
  RAISE EXCEPTION 'transactions is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER transactions_append_only BEFORE UPDATE OR DELETE ON transactions
  FOR EACH ROW EXECUTE FUNCTION transactions_guard();
CREATE FUNCTION transactions_no_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION '% refused on %: the log is append-only', TG_OP, TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER transactions_no_truncate BEFORE TRUNCATE ON transactions
  FOR EACH STATEMENT EXECUTE FUNCTION transactions_no_truncate();

-- Anchors are never deleted; the on-chain fields may be filled once, nothing else changes.
CREATE FUNCTION transaction_anchors_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'UPDATE'
     AND OLD.network IS NULL
     AND NEW.anchor_id = OLD.anchor_id AND NEW.from_sequence = OLD.from_sequence
     AND NEW.to_sequence = OLD.to_sequence AND NEW.merkle_root = OLD.merkle_root
     AND NEW.created_at = OLD.created_at THEN
    RETURN NEW;
  END IF;
  RAISE EXCEPTION 'transaction_anchors: % refused (anchors are permanent; chain info is set once)', TG_OP USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER transaction_anchors_guard BEFORE UPDATE OR DELETE ON transaction_anchors
  FOR EACH ROW EXECUTE FUNCTION transaction_anchors_guard();
CREATE TRIGGER transaction_anchors_no_truncate BEFORE TRUNCATE ON transaction_anchors
  FOR EACH STATEMENT EXECUTE FUNCTION transactions_no_truncate();
