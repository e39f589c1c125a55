//! Bounded retries around single ACME protocol steps.
//!
//! instant-acme retries `badNonce` only a couple of times inside one POST; under a CA that rejects
//! half its nonces (Pebble's chaos mode, or a load-balanced CA) that is not enough. Every step the
//! order code takes runs in a loop that asks [`StepRetry::again`] whether the error is worth
//! another try. Used by `account.rs` and `order.rs`, inside the issuance task.

use std::time::Duration;

use crate::acme::error::{
    ACCOUNT_DOES_NOT_EXIST, BAD_NONCE, RATE_LIMITED, SERVER_INTERNAL, problem_of,
};

/// badNonce retries per step: free (a fresh nonce is all it takes, RFC 8555 §6.5), so generous;
/// ten tries of a step at 50 % nonce rejection all fail with probability 0.1 %.
const NONCE_RETRIES: u32 = 10;
/// Retries per step for transport errors and 5xx; longer outages are the scheduler's backoff's job.
const OTHER_RETRIES: u32 = 3;
/// First pause before retrying a transport error or 5xx; doubles each time (0.5 + 1 + 2 s).
const FIRST_DELAY: Duration = Duration::from_millis(500);

/// The retry budget of one step.
#[derive(Debug)]
pub(crate) struct StepRetry {
    nonce_retries: u32,
    other_retries: u32,
    delay: Duration,
}

impl StepRetry {
    /// A fresh budget.
    pub(crate) fn new() -> Self {
        Self {
            nonce_retries: 0,
            other_retries: 0,
            delay: FIRST_DELAY,
        }
    }

    /// Waits and returns `Ok` when `error` is transient and the budget allows another try;
    /// otherwise hands the error back.
    ///
    /// # Cancel safety
    /// Only sleeps: dropping it loses nothing.
    pub(crate) async fn again(
        &mut self,
        error: instant_acme::Error,
    ) -> Result<(), instant_acme::Error> {
        if !is_transient(&error) {
            return Err(error);
        }
        if problem_of(&error).and_then(|p| p.r#type.as_deref()) == Some(BAD_NONCE) {
            if self.nonce_retries >= NONCE_RETRIES {
                return Err(error);
            }
            self.nonce_retries += 1;
            tracing::debug!(%error, "ACME nonce rejected; retrying with a fresh one");
            return Ok(());
        }
        if self.other_retries >= OTHER_RETRIES {
            return Err(error);
        }
        self.other_retries += 1;
        tracing::debug!(%error, delay_ms = self.delay.as_millis() as u64, "transient ACME error; retrying");
        tokio::time::sleep(self.delay).await;
        self.delay *= 2;
        Ok(())
    }
}

/// Whether another try of the same request could succeed.
pub(crate) fn is_transient(error: &instant_acme::Error) -> bool {
    use instant_acme::Error;
    match error {
        Error::Api(problem) => match problem.r#type.as_deref() {
            Some(BAD_NONCE | SERVER_INTERNAL) => true,
            // Waiting seconds will not lift a rate limit, and a vanished account needs re-registering.
            Some(RATE_LIMITED | ACCOUNT_DOES_NOT_EXIST) => false,
            _ => problem.status.is_some_and(|s| s >= 500),
        },
        // Connection refused/reset, TLS failure, timeout: the transport, not the request.
        Error::Other(_) => true,
        // A 5xx from a proxy in front of the CA has an HTML body that fails to parse as a problem.
        Error::Json(_) => true,
        // instant-acme reports a failed newNonce fetch (often a 5xx) this way.
        Error::Str(text) => text.contains("nonce"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(kind: &str, status: u16) -> instant_acme::Error {
        let json = format!(r#"{{"type":"{kind}","detail":"x","status":{status}}}"#);
        instant_acme::Error::Api(serde_json::from_str(&json).expect("literal problem document"))
    }

    #[test]
    fn transient_errors_are_nonce_server_and_transport_failures() {
        assert!(is_transient(&problem(BAD_NONCE, 400)));
        assert!(is_transient(&problem(
            "urn:ietf:params:acme:error:whatever",
            503
        )));
        assert!(is_transient(&instant_acme::Error::Other(
            "connection refused".into()
        )));
        assert!(!is_transient(&problem(RATE_LIMITED, 429)));
        assert!(!is_transient(&problem(ACCOUNT_DOES_NOT_EXIST, 400)));
        assert!(!is_transient(&problem(
            "urn:ietf:params:acme:error:unauthorized",
            403
        )));
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stop_after_the_budget_and_nonces_get_their_own() {
        let mut retry = StepRetry::new();
        let started = tokio::time::Instant::now();
        let mut granted = 0;
        while retry.again(problem(SERVER_INTERNAL, 500)).await.is_ok() {
            granted += 1;
        }
        assert_eq!(granted, OTHER_RETRIES);
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(3500),
            "0.5 + 1 + 2 s of pauses"
        );
        // The 5xx budget is spent; badNonce still gets its own, without pauses.
        for _ in 0..NONCE_RETRIES {
            assert!(retry.again(problem(BAD_NONCE, 400)).await.is_ok());
        }
        assert!(retry.again(problem(BAD_NONCE, 400)).await.is_err());
        assert_eq!(started.elapsed(), Duration::from_millis(3500));
        assert!(
            retry
                .again(problem("urn:ietf:params:acme:error:malformed", 400))
                .await
                .is_err()
        );
    }
}
