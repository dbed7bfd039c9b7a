//! Finding a capacity: run steps at rates growing by a factor (1.25x) until a step fails,
//! where a step only counts as failed if it fails twice in a row (one retry absorbs a noisy
//! moment on a shared machine). The capacity is the highest rate that passed. If the start
//! rate itself fails, the rate steps down by the same factor until one passes, so the
//! answer is a number rather than "below the start".

use std::future::Future;

/// How the rate grows and when to stop.
#[derive(Debug, Clone, Copy)]
pub struct Ladder {
    pub start: f64,
    pub factor: f64,
    /// Most distinct rates to try.
    pub max_steps: usize,
    /// Never go above this rate.
    pub max_rate: f64,
    /// When stepping down, never go below this rate.
    pub min_rate: f64,
}

/// One run of one step.
#[derive(Debug, Clone)]
pub struct Attempt<T> {
    pub rate: f64,
    /// 1 for the first run at this rate, 2 for the retry.
    pub attempt: u8,
    pub passed: bool,
    pub outcome: T,
}

/// Every attempt made, and the highest rate that passed (`None` if even the first failed).
#[derive(Debug, Clone)]
pub struct Search<T> {
    pub capacity: Option<f64>,
    pub attempts: Vec<Attempt<T>>,
    /// Why the search ended: a failed step, the step limit or the rate limit.
    pub stopped: &'static str,
}

/// Runs one step with the fail-twice rule; returns whether it passed.
async fn try_rate<T, F, Fut>(
    rate: f64,
    step: &mut F,
    passed: &impl Fn(&T) -> bool,
    attempts: &mut Vec<Attempt<T>>,
) -> bool
where
    F: FnMut(f64) -> Fut,
    Fut: Future<Output = T>,
{
    for attempt in 1..=2u8 {
        let outcome = step(rate).await;
        let ok = passed(&outcome);
        attempts.push(Attempt {
            rate,
            attempt,
            passed: ok,
            outcome,
        });
        if ok {
            return true;
        }
    }
    false
}

/// Runs the search. `step(rate)` measures one step; `passed` judges its outcome.
pub async fn search<T, F, Fut>(
    ladder: Ladder,
    mut step: F,
    passed: impl Fn(&T) -> bool,
) -> Search<T>
where
    F: FnMut(f64) -> Fut,
    Fut: Future<Output = T>,
{
    let mut attempts = Vec::new();
    let mut capacity = None;
    let mut rate = ladder.start;
    let mut stopped = "max_steps";
    for _ in 0..ladder.max_steps {
        if rate > ladder.max_rate {
            stopped = "max_rate";
            break;
        }
        if !try_rate(rate, &mut step, &passed, &mut attempts).await {
            stopped = "failed";
            break;
        }
        capacity = Some(rate);
        rate *= ladder.factor;
    }
    if capacity.is_none() && stopped == "failed" {
        stopped = "nothing_passed";
        let mut rate = ladder.start / ladder.factor;
        for _ in 1..ladder.max_steps {
            if rate < ladder.min_rate {
                break;
            }
            if try_rate(rate, &mut step, &passed, &mut attempts).await {
                capacity = Some(rate);
                stopped = "below_start";
                break;
            }
            rate /= ladder.factor;
        }
    }
    Search {
        capacity,
        attempts,
        stopped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    fn ladder(max_steps: usize) -> Ladder {
        Ladder {
            start: 100.0,
            factor: 1.25,
            max_steps,
            max_rate: 1e9,
            min_rate: 50.0,
        }
    }

    /// A fake system: passes below `limit`, and fails once at each rate in `flaky`.
    async fn run(limit: f64, flaky: &[f64], max_steps: usize) -> Search<bool> {
        let flaked = RefCell::new(Vec::<f64>::new());
        search(
            ladder(max_steps),
            |rate| {
                let once = flaky.iter().any(|f| (f - rate).abs() < 1e-6)
                    && !flaked.borrow().iter().any(|f| (f - rate).abs() < 1e-6);
                if once {
                    flaked.borrow_mut().push(rate);
                }
                let ok = rate <= limit && !once;
                async move { ok }
            },
            |ok| *ok,
        )
        .await
    }

    fn rates(s: &Search<bool>) -> Vec<(u32, u8, bool)> {
        s.attempts
            .iter()
            .map(|a| (a.rate.round() as u32, a.attempt, a.passed))
            .collect()
    }

    #[tokio::test]
    async fn steps_up_until_a_rate_fails_twice() {
        let s = run(200.0, &[], 20).await;
        assert_eq!(s.capacity.map(|c| c.round()), Some(195.0));
        assert_eq!(s.stopped, "failed");
        assert_eq!(
            rates(&s),
            vec![
                (100, 1, true),
                (125, 1, true),
                (156, 1, true),
                (195, 1, true),
                (244, 1, false),
                (244, 2, false)
            ]
        );
    }

    #[tokio::test]
    async fn a_single_failure_is_retried_and_forgiven() {
        let s = run(200.0, &[125.0], 20).await;
        assert_eq!(s.capacity.map(|c| c.round()), Some(195.0));
        assert_eq!(&rates(&s)[1..3], &[(125, 1, false), (125, 2, true)]);
    }

    #[tokio::test]
    async fn failing_at_the_start_steps_down() {
        let s = run(70.0, &[], 20).await;
        assert_eq!(s.capacity.map(|c| c.round()), Some(64.0));
        assert_eq!(s.stopped, "below_start");
        assert_eq!(
            rates(&s),
            vec![
                (100, 1, false),
                (100, 2, false),
                (80, 1, false),
                (80, 2, false),
                (64, 1, true)
            ]
        );
    }

    #[tokio::test]
    async fn stepping_down_stops_at_the_minimum() {
        let s = run(10.0, &[], 20).await;
        assert_eq!(s.capacity, None);
        assert_eq!(s.stopped, "nothing_passed");
        // 100, 80, 64 and 51.2 twice each; 41 is below the minimum.
        assert_eq!(s.attempts.len(), 8);
    }

    #[tokio::test]
    async fn the_step_limit_bounds_the_search() {
        let s = run(1e9, &[], 3).await;
        assert_eq!(s.capacity.map(|c| c.round()), Some(156.0));
        assert_eq!(s.stopped, "max_steps");
        assert_eq!(s.attempts.len(), 3);
    }
}
