//! Poison document or systemic fault. A document that keeps failing while others on the same route
//! succeed is poison: once its attempts are spent it goes to the dead letters. When a route fails
//! for every document through a whole retry window (results binding deleted, broker refusing,
//! device failing every batch), the fault is systemic: the route's breaker opens, readiness turns
//! red with the reason, intake pauses, and the documents already read stay unacknowledged and
//! probe the route every cool-down until it works again; then everything resumes by itself.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::RetryConfig;
use crate::sink::OutputKind;
use crate::telemetry::health::Health;
use crate::telemetry::metrics;

/// A path every document takes: the engine, or one output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Route {
    /// The forward pass.
    Engine,
    /// Result publishes.
    Results,
    /// Escalation publishes.
    Escalate,
    /// Dead-letter publishes.
    DeadLetter,
}

impl Route {
    /// Every route.
    pub const ALL: [Route; 4] = [
        Self::Engine,
        Self::Results,
        Self::Escalate,
        Self::DeadLetter,
    ];

    /// The name in readiness, logs and the `route` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Engine => "engine",
            Self::Results => "results",
            Self::Escalate => "escalate",
            Self::DeadLetter => "dead_letter",
        }
    }

    /// The route of an output.
    pub fn of(kind: OutputKind) -> Self {
        match kind {
            OutputKind::Result => Self::Results,
            OutputKind::Escalate => Self::Escalate,
            OutputKind::DeadLetter => Self::DeadLetter,
        }
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Try again after this wait (attempts left).
    Retry(Duration),
    /// Attempts spent while the route worked for other documents: dead-letter it.
    Poison,
    /// Attempts spent and the route worked for no one since: keep it unacknowledged and probe
    /// again after this wait.
    Hold(Duration),
}

/// One document's failed attempts on one route.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tries {
    failures: u32,
    first: Option<Instant>,
    held: bool,
}

impl Tries {
    /// Records a failed attempt that started at `started` and judges it. A document held during
    /// a systemic fault starts a fresh count once the route has recovered: the documents that
    /// failed beside the first success of a recovering route are not poison.
    pub fn fail(
        &mut self,
        breaker: &Breaker,
        route: Route,
        started: Instant,
        retry: &RetryConfig,
        error: &dyn std::fmt::Display,
    ) -> Verdict {
        if self.held && !breaker.is_open(route) {
            *self = Self::default();
        }
        self.failures += 1;
        let first = *self.first.get_or_insert(started);
        let v = breaker.judge(route, first, self.failures, retry, error);
        self.held = matches!(v, Verdict::Hold(_));
        v
    }
}

#[derive(Debug, Default)]
struct RouteState {
    last_success: Option<Instant>,
    open: Option<String>,
}

/// The breakers of every route, shared by the pipeline.
#[derive(Debug)]
pub struct Breaker {
    routes: Mutex<BTreeMap<Route, RouteState>>,
    cool_down: Duration,
    health: Arc<Health>,
    // Intake stays paused until this instant (None: not paused). Set on every hold, cleared when
    // no route is open any more.
    paused_until: watch::Sender<Option<Instant>>,
}

impl Breaker {
    /// Breakers that probe an open route every `cool_down`, reporting to `health`.
    pub fn new(health: Arc<Health>, cool_down: Duration) -> Self {
        for r in Route::ALL {
            metrics::route_up(r.as_str(), true);
        }
        Self {
            routes: Mutex::new(BTreeMap::new()),
            cool_down,
            health,
            paused_until: watch::channel(None).0,
        }
    }

    /// `route` worked for one document.
    pub fn success(&self, route: Route) {
        let mut routes = self.routes.lock().expect("breaker lock");
        let st = routes.entry(route).or_default();
        st.last_success = Some(Instant::now());
        if let Some(reason) = st.open.take() {
            tracing::info!(route = route.as_str(), was = %reason, "route works again; resuming");
            self.health.fault(route.as_str(), None);
            metrics::route_up(route.as_str(), true);
        }
        if routes.values().all(|s| s.open.is_none()) {
            self.paused_until.send_if_modified(|p| p.take().is_some());
        }
    }

    /// Judges a document's failed attempt on `route`: `failures` so far (this one included), the
    /// first of them at `first`.
    pub fn judge(
        &self,
        route: Route,
        first: Instant,
        failures: u32,
        retry: &RetryConfig,
        error: &dyn std::fmt::Display,
    ) -> Verdict {
        if failures < retry.max_attempts {
            return Verdict::Retry(retry.backoff(failures));
        }
        let mut routes = self.routes.lock().expect("breaker lock");
        let st = routes.entry(route).or_default();
        if st.last_success.is_some_and(|t| t >= first) {
            return Verdict::Poison;
        }
        let reason = format!("every {} attempt fails: {error}", route.as_str());
        if st.open.is_none() {
            tracing::error!(route = route.as_str(), %reason,
                "systemic fault: intake paused, documents held unacknowledged, probing");
            self.report_open(route, &reason);
        }
        st.open = Some(reason);
        self.paused_until
            .send_replace(Some(Instant::now() + self.cool_down));
        Verdict::Hold(self.cool_down)
    }

    /// Marks `route` broken for a message that will not be tried again (readiness and
    /// `labelmill_route_up` say so) until the route next works for a document. Intake goes on.
    pub fn stuck(&self, route: Route, reason: String) {
        let mut routes = self.routes.lock().expect("breaker lock");
        let st = routes.entry(route).or_default();
        tracing::error!(route = route.as_str(), %reason, "route broken for a message");
        self.report_open(route, &reason);
        st.open = Some(reason);
    }

    /// Readiness and `labelmill_route_up` say that `route` is broken, and why.
    fn report_open(&self, route: Route, reason: &str) {
        self.health.fault(route.as_str(), Some(reason.to_string()));
        metrics::route_up(route.as_str(), false);
    }

    /// Until when intake is paused, if it is.
    pub fn paused_until(&self) -> Option<Instant> {
        (*self.paused_until.borrow()).filter(|&t| t > Instant::now())
    }

    /// Changes of the pause.
    pub fn subscribe(&self) -> watch::Receiver<Option<Instant>> {
        self.paused_until.subscribe()
    }

    /// Sleeps `wait`, or less when `route` closes meanwhile (a probe passed for another document).
    pub async fn wait_or_closed(&self, route: Route, wait: Duration) {
        let mut rx = self.subscribe();
        if !self.is_open(route) {
            // An ordinary retry: its whole backoff.
            tokio::time::sleep(wait).await;
            return;
        }
        let closed = async {
            while self.is_open(route) {
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = closed => {}
        }
    }

    /// Whether `route` is open (a systemic fault on it).
    pub fn is_open(&self, route: Route) -> bool {
        self.routes
            .lock()
            .expect("breaker lock")
            .get(&route)
            .is_some_and(|s| s.open.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry() -> RetryConfig {
        RetryConfig {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        }
    }

    fn breaker() -> (Breaker, Arc<Health>) {
        let h = Arc::new(Health::default());
        h.model_ready();
        h.expect_broker("amqp");
        h.broker("amqp", true);
        (Breaker::new(h.clone(), Duration::from_secs(5)), h)
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_left_means_retry_with_backoff() {
        let (b, h) = breaker();
        let first = Instant::now();
        let r = retry();
        assert_eq!(
            b.judge(Route::Results, first, 1, &r, &"x"),
            Verdict::Retry(Duration::from_millis(100))
        );
        assert_eq!(
            b.judge(Route::Results, first, 2, &r, &"x"),
            Verdict::Retry(Duration::from_millis(200))
        );
        assert!(h.readiness().ready && b.paused_until().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_document_failing_while_others_pass_is_poison() {
        let (b, h) = breaker();
        let first = Instant::now();
        tokio::time::advance(Duration::from_millis(10)).await;
        b.success(Route::Results);
        let v = b.judge(Route::Results, first, 3, &retry(), &"rejected");
        assert_eq!(v, Verdict::Poison);
        assert!(h.readiness().ready, "a poison document is not a fault");
        assert!(b.paused_until().is_none() && !b.is_open(Route::Results));
        // A success on another route says nothing about this one.
        b.success(Route::DeadLetter);
        tokio::time::advance(Duration::from_millis(10)).await;
        let later = Instant::now();
        assert!(matches!(
            b.judge(Route::Results, later, 3, &retry(), &"x"),
            Verdict::Hold(_)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn everything_failing_opens_the_route_until_a_probe_passes() {
        let (b, h) = breaker();
        b.success(Route::Results);
        tokio::time::advance(Duration::from_secs(1)).await;
        let first = Instant::now();
        let v = b.judge(
            Route::Results,
            first,
            3,
            &retry(),
            &"'x/results' is unroutable",
        );
        assert_eq!(v, Verdict::Hold(Duration::from_secs(5)));
        let r = h.readiness();
        assert!(!r.ready);
        assert!(
            r.faults["results"].contains("unroutable"),
            "the reason is in readiness: {r:?}"
        );
        let until = b.paused_until().expect("intake paused");
        assert_eq!(until, Instant::now() + Duration::from_secs(5));
        // The pause lapses after the cool-down (the next probe), though the route stays open.
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(b.paused_until().is_none() && b.is_open(Route::Results));
        assert!(!h.readiness().ready);
        // Held again: paused again.
        assert!(matches!(
            b.judge(Route::Results, first, 4, &retry(), &"x"),
            Verdict::Hold(_)
        ));
        let mut rx = b.subscribe();
        rx.borrow_and_update();
        b.success(Route::Results);
        assert!(rx.has_changed().unwrap(), "the loop is woken");
        assert!(b.paused_until().is_none() && !b.is_open(Route::Results));
        assert!(h.readiness().ready && h.readiness().faults.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_document_probes_again_as_soon_as_the_route_closes() {
        let (b, _) = breaker();
        let b = Arc::new(b);
        b.judge(Route::Results, Instant::now(), 3, &retry(), &"x");
        let t0 = Instant::now();
        let held = tokio::spawn({
            let b = b.clone();
            async move {
                b.wait_or_closed(Route::Results, Duration::from_secs(5))
                    .await
            }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        b.success(Route::Results);
        held.await.unwrap();
        assert_eq!(
            t0.elapsed(),
            Duration::from_secs(1),
            "woken by the success, not the timer"
        );
        // A closed route: the whole backoff.
        let t1 = Instant::now();
        b.wait_or_closed(Route::Results, Duration::from_millis(300))
            .await;
        assert_eq!(t1.elapsed(), Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_document_gets_a_fresh_budget_once_the_route_recovers() {
        let (b, _) = breaker();
        let r = retry();
        let mut t = Tries::default();
        for want in [
            Verdict::Retry(Duration::from_millis(100)),
            Verdict::Retry(Duration::from_millis(200)),
        ] {
            assert_eq!(t.fail(&b, Route::Engine, Instant::now(), &r, &"x"), want);
            tokio::time::advance(Duration::from_millis(50)).await;
        }
        assert!(matches!(
            t.fail(&b, Route::Engine, Instant::now(), &r, &"x"),
            Verdict::Hold(_)
        ));
        assert!(matches!(
            t.fail(&b, Route::Engine, Instant::now(), &r, &"x"),
            Verdict::Hold(_)
        ));
        // The route recovers (another document passes), and this one fails in the same batch:
        // not poison, a fresh start.
        b.success(Route::Engine);
        assert_eq!(
            t.fail(&b, Route::Engine, Instant::now(), &r, &"x"),
            Verdict::Retry(Duration::from_millis(100))
        );
        // Failing on while the route works for others: poison once the new budget is spent.
        tokio::time::advance(Duration::from_millis(50)).await;
        t.fail(&b, Route::Engine, Instant::now(), &r, &"x");
        b.success(Route::Engine);
        assert_eq!(
            t.fail(&b, Route::Engine, Instant::now(), &r, &"x"),
            Verdict::Poison
        );
    }

    #[tokio::test(start_paused = true)]
    async fn intake_stays_paused_while_any_route_is_open() {
        let (b, _) = breaker();
        let first = Instant::now();
        b.judge(Route::Results, first, 3, &retry(), &"x");
        b.judge(Route::DeadLetter, first, 3, &retry(), &"y");
        b.success(Route::Results);
        assert!(
            b.paused_until().is_some(),
            "the dead-letter route is still open"
        );
        b.success(Route::DeadLetter);
        assert!(b.paused_until().is_none());
    }
}
