-- Analytics follows settlement and dispatch chains downwards (a record and the records that
-- relate to it): the recursive step looks records up by relates_to.
CREATE INDEX transactions_relates_to ON transactions (relates_to) WHERE relates_to IS NOT NULL;
