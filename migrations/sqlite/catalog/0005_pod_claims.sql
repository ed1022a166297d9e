-- The claims a pod's order consumers hold until their shards have the orders, as
-- `partition@era` words: a partition that lost its state rebuilds once none of an
-- earlier era is held.
ALTER TABLE pods ADD COLUMN claims TEXT NOT NULL DEFAULT '';
