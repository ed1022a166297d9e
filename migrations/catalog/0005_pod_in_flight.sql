-- The inventory partitions of the order messages a pod holds until their shards have
-- the orders (partition numbers separated by spaces): a partition that lost its
-- state rebuilds once none is held. NULL: a pod that does not say, which holds
-- anything as far as a rebuild knows.
ALTER TABLE pods ADD COLUMN in_flight TEXT;
