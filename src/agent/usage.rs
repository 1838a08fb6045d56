//! Token usage and cost, summed per exec, per step and per run.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::blueprint::Prices;

/// Tokens and money spent on model calls.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
pub struct Usage {
    /// Input tokens not read from a cache.
    pub input_tokens: u64,
    /// Output tokens, reasoning included.
    pub output_tokens: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_read_tokens: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_write_tokens: u64,
    /// US dollars, as the agent reported it or as computed from the blueprint's `prices`;
    /// absent when neither is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Usage {
    /// Every token counted, as budgets count them.
    #[must_use]
    pub fn total_tokens(&self) -> u64 {
        self.input_tokens
            .saturating_add(self.output_tokens)
            .saturating_add(self.cache_read_tokens)
            .saturating_add(self.cache_write_tokens)
    }

    /// `self` and `other` together. A cost known on one side only is kept (the other side is
    /// counted as free, which only happens when an agent reports no cost and no prices are set).
    #[must_use]
    pub fn plus(&self, other: &Usage) -> Usage {
        Usage {
            input_tokens: self.input_tokens.saturating_add(other.input_tokens),
            output_tokens: self.output_tokens.saturating_add(other.output_tokens),
            cache_read_tokens: self
                .cache_read_tokens
                .saturating_add(other.cache_read_tokens),
            cache_write_tokens: self
                .cache_write_tokens
                .saturating_add(other.cache_write_tokens),
            cost_usd: match (self.cost_usd, other.cost_usd) {
                (None, None) => None,
                (a, b) => Some(a.unwrap_or(0.0) + b.unwrap_or(0.0)),
            },
        }
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.total_tokens() == 0 && self.cost_usd.is_none_or(|c| c == 0.0)
    }

    /// With the cost filled in from `prices` when the agent reported none.
    #[must_use]
    pub fn priced(mut self, prices: Option<&Prices>) -> Usage {
        if self.cost_usd.is_none()
            && let Some(prices) = prices
        {
            self.cost_usd = Some(cost_of(&self, prices));
        }
        self
    }
}

/// What `usage` costs at `prices` (US dollars per million tokens).
#[must_use]
pub fn cost_of(usage: &Usage, prices: &Prices) -> f64 {
    let per = |tokens: u64, price: f64| tokens as f64 * price / 1_000_000.0;
    per(usage.input_tokens, prices.input)
        + per(usage.output_tokens, prices.output)
        + per(
            usage.cache_read_tokens,
            prices.cache_read.unwrap_or(prices.input),
        )
        + per(
            usage.cache_write_tokens,
            prices.cache_write.unwrap_or(prices.input),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_follows_the_price_table() {
        let usage = Usage {
            input_tokens: 1_000_000,
            output_tokens: 100_000,
            cache_read_tokens: 2_000_000,
            cache_write_tokens: 0,
            cost_usd: None,
        };
        let prices = Prices {
            input: 3.0,
            output: 15.0,
            cache_read: Some(0.3),
            cache_write: None,
        };
        let cost = cost_of(&usage, &prices);
        assert!((cost - (3.0 + 1.5 + 0.6)).abs() < 1e-9, "{cost}");
        assert_eq!(usage.priced(Some(&prices)).cost_usd, Some(cost));
        let reported = Usage {
            cost_usd: Some(0.01),
            ..usage
        };
        assert_eq!(reported.priced(Some(&prices)).cost_usd, Some(0.01));
    }

    #[test]
    fn sums_keep_a_cost_known_on_one_side() {
        let a = Usage {
            input_tokens: 10,
            output_tokens: 5,
            ..Usage::default()
        };
        let b = Usage {
            input_tokens: 1,
            cost_usd: Some(0.5),
            ..Usage::default()
        };
        let sum = a.plus(&b);
        assert_eq!(sum.total_tokens(), 16);
        assert_eq!(sum.cost_usd, Some(0.5));
        assert_eq!(a.plus(&a).cost_usd, None);
    }
}
