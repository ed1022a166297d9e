//! Growing the shard count, planned from the live data (`flashsale reshard --to N`, a
//! dry run: it reads and changes nothing). docs/resharding.md gives the whole plan.
//!
//! A user's data lives on shard `murmur3(userId) % shards`. Read as logical slots,
//! `slot = murmur3(userId) % 4096` and `shard = slot % shards`, that is the same
//! placement whenever the shard count divides 4096. Growing from N to a multiple M of
//! N moves whole slots only, and every user moves from shard `s` to a shard `t` with
//! `t % N == s` (4 → 8: from shard s to s or s + 4), so each new shard is filled from
//! exactly one old one.

use std::collections::BTreeMap;
use std::str::FromStr;

use futures_util::TryStreamExt;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, Row};

use super::hash::murmur3_32;

/// Logical slots: a shard count that divides this keeps today's placement.
pub const SLOTS: usize = 4096;

pub fn slot(user: &str) -> usize {
    murmur3_32(user.as_bytes(), 0) as usize % SLOTS
}

/// Why a target count cannot be planned.
pub fn check_target(from: usize, to: usize) -> Result<(), String> {
    if to <= from {
        return Err(format!(
            "--to {to}: resharding grows the shard count, which is {from} now"
        ));
    }
    if !to.is_multiple_of(from) || !SLOTS.is_multiple_of(to) {
        return Err(format!(
            "--to {to}: the new count must be a multiple of today's {from} that divides {SLOTS} (for example {})",
            from * 2
        ));
    }
    Ok(())
}

/// Users and orders going from one shard to another.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flow {
    pub users: u64,
    pub orders: u64,
}

/// One user that moves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserMove {
    pub user: String,
    pub from: usize,
    pub to: usize,
    pub orders: u64,
}

#[derive(Debug, Default)]
pub struct Plan {
    pub from: usize,
    pub to: usize,
    /// (from shard, to shard) → what moves; staying users are under (s, s).
    pub flows: BTreeMap<(usize, usize), Flow>,
}

impl Plan {
    pub fn moving(&self) -> Flow {
        self.sum(|from, to| from != to)
    }

    pub fn total(&self) -> Flow {
        self.sum(|_, _| true)
    }

    fn sum(&self, which: impl Fn(usize, usize) -> bool) -> Flow {
        let mut f = Flow::default();
        for ((from, to), flow) in &self.flows {
            if which(*from, *to) {
                f.users += flow.users;
                f.orders += flow.orders;
            }
        }
        f
    }
}

/// Reads every shard's users and their order counts (`shard_urls`, in shard order),
/// calling `each` for every user that would move to `to` shards.
pub async fn plan(
    shard_urls: &[String],
    to: usize,
    mut each: impl FnMut(&UserMove),
) -> Result<Plan, sqlx::Error> {
    let from = shard_urls.len();
    let mut plan = Plan {
        from,
        to,
        ..Plan::default()
    };
    for (shard, url) in shard_urls.iter().enumerate() {
        let mut con = PgConnectOptions::from_str(url)?.connect().await?;
        let mut tx = con.begin().await?;
        {
            // Every user of the shard, with or without orders; no binds, so a pooler in
            // transaction mode is no trouble.
            let mut rows = sqlx::raw_sql(
                "SELECT user_id, count(order_id) AS orders FROM \
                 (SELECT user_id, NULL AS order_id FROM users \
                  UNION ALL SELECT user_id, order_id FROM orders) u \
                 GROUP BY user_id",
            )
            .fetch(&mut *tx);
            while let Some(row) = rows.try_next().await? {
                let user: String = row.try_get("user_id")?;
                let orders = row.try_get::<i64, _>("orders")? as u64;
                let target = slot(&user) % to;
                let flow = plan.flows.entry((shard, target)).or_default();
                flow.users += 1;
                flow.orders += orders;
                if target != shard {
                    each(&UserMove {
                        user,
                        from: shard,
                        to: target,
                        orders,
                    });
                }
            }
        }
        tx.commit().await?;
        con.close().await?;
    }
    Ok(plan)
}

/// The plan as a table, with the totals.
pub fn render(plan: &Plan) -> String {
    let mut out = format!(
        "resharding {} -> {} shards: slot = murmur3(userId) % {SLOTS}, shard = slot % shards\n\n",
        plan.from, plan.to
    );
    out.push_str(&format!(
        "{:<10} {:<10} {:>10} {:>12}\n",
        "from", "to", "users", "orders"
    ));
    for ((from, to), flow) in &plan.flows {
        let to = match from == to {
            true => "(stays)".to_string(),
            false => format!("shard {to}"),
        };
        out.push_str(&format!(
            "{:<10} {:<10} {:>10} {:>12}\n",
            format!("shard {from}"),
            to,
            flow.users,
            flow.orders
        ));
    }
    let (moving, total) = (plan.moving(), plan.total());
    let share = |a: u64, b: u64| match b {
        0 => 0.0,
        _ => a as f64 * 100.0 / b as f64,
    };
    out.push_str(&format!(
        "\nmoving: {} of {} users ({:.1}%), {} of {} orders ({:.1}%)\n",
        moving.users,
        total.users,
        share(moving.users, total.users),
        moving.orders,
        total.orders,
        share(moving.orders, total.orders)
    ));
    out.push_str("dry run: nothing was changed (docs/resharding.md gives the steps)\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shards::hash::bucket;

    #[test]
    fn slots_keep_todays_placement_for_counts_that_divide_them() {
        for user in ["alice", "bob", "u-1", "u-2", "8f1c2", ""] {
            for shards in [1, 2, 4, 8, 16] {
                assert_eq!(
                    slot(user) % shards,
                    bucket(user, shards),
                    "{user} on {shards}"
                );
            }
            // Growing 4 -> 8, a user stays or moves to shard + 4.
            let (old, new) = (bucket(user, 4), slot(user) % 8);
            assert!(new == old || new == old + 4);
        }
    }

    #[test]
    fn targets_must_grow_by_a_multiple_that_divides_the_slots() {
        assert!(check_target(4, 8).is_ok());
        assert!(check_target(4, 16).is_ok());
        assert!(check_target(4, 4).is_err());
        assert!(check_target(4, 2).is_err());
        assert!(check_target(4, 6).is_err());
        assert!(check_target(3, 6).is_err());
    }
}
