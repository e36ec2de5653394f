//! Ownership of the pipeline's tasks: each runs in a [`Tasks`] set under
//! the shutdown token, and one that ends before shutdown (with an error, a
//! panic, or just returning) is a [`Failure`]: readiness turns false, what
//! was accepted is drained, and the process exits non-zero.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt as _;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::PipelineError;

/// The first failure of a task that must not end before shutdown. Recording
/// it starts the shutdown (so readiness turns false at once and what was
/// accepted is drained), and [`crate::Pipeline::wait`] then returns it, so
/// the process exits non-zero and its supervisor restarts it.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    first: Arc<std::sync::Mutex<Option<PipelineError>>>,
    shutdown: CancellationToken,
}

impl Failure {
    pub(crate) fn new(shutdown: CancellationToken) -> Self {
        Self {
            first: Arc::default(),
            shutdown,
        }
    }

    /// Records `error` (the first one wins) and starts the shutdown.
    pub(crate) fn fail(&self, error: PipelineError) {
        tracing::error!(error = %error, "stopping fleetpipe");
        if let Ok(mut first) = self.first.lock() {
            first.get_or_insert(error);
        }
        self.shutdown.cancel();
    }

    /// The first failure, if any.
    pub(crate) fn take(&self) -> Option<PipelineError> {
        self.first.lock().ok().and_then(|mut first| first.take())
    }

    /// Whether shutdown was requested (by a signal or a failure).
    pub(crate) fn stopping(&self) -> bool {
        self.shutdown.is_cancelled()
    }
}

/// Tasks that each run until shutdown (and the drain after it).
#[derive(Debug)]
pub(crate) struct Tasks {
    set: JoinSet<()>,
    failure: Failure,
}

impl Tasks {
    pub(crate) fn new(failure: Failure) -> Self {
        Self {
            set: JoinSet::new(),
            failure,
        }
    }

    /// Runs `task`, named `name` in the error it makes when it ends before
    /// shutdown, returns an error or panics.
    pub(crate) fn spawn<F>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = Result<(), PipelineError>> + Send + 'static,
    {
        let failure = self.failure.clone();
        self.set.spawn(async move {
            match AssertUnwindSafe(task).catch_unwind().await {
                Ok(Ok(())) if failure.stopping() => {}
                Ok(Ok(())) => failure.fail(PipelineError::TaskEnded { task: name }),
                Ok(Err(e)) => failure.fail(e),
                Err(_) => failure.fail(PipelineError::TaskPanicked { task: name }),
            }
        });
    }

    /// Waits until every task has ended.
    pub(crate) async fn join_all(&mut self) {
        while self.set.join_next().await.is_some() {}
    }
}
