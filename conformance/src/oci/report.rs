//! Per-case outcomes of a conformance run, and the runner that records them.

use std::fmt;
use std::future::Future;

use super::Workflow;

/// What happened to one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail(String),
    Skip(String),
}

/// One case of one workflow.
#[derive(Debug, Clone)]
pub struct CaseResult {
    pub workflow: Workflow,
    /// `<context> / <specification>`, as the Go suite names its cases.
    pub name: String,
    pub outcome: Outcome,
}

/// Every case run, in order.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub cases: Vec<CaseResult>,
}

impl Report {
    pub fn passed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Pass))
    }

    pub fn failed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Fail(_)))
    }

    pub fn skipped(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Skip(_)))
    }

    /// True when no case failed.
    pub fn is_success(&self) -> bool {
        self.failed() == 0
    }

    /// The failing cases.
    pub fn failures(&self) -> impl Iterator<Item = &CaseResult> {
        self.cases
            .iter()
            .filter(|c| matches!(c.outcome, Outcome::Fail(_)))
    }

    /// Append the cases of another report.
    pub fn extend(&mut self, other: Report) {
        self.cases.extend(other.cases);
    }

    fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.cases.iter().filter(|c| f(&c.outcome)).count()
    }
}

impl fmt::Display for CaseResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            Outcome::Pass => write!(f, "PASS  {} / {}", self.workflow, self.name),
            Outcome::Fail(m) => write!(f, "FAIL  {} / {}: {}", self.workflow, self.name, m),
            Outcome::Skip(m) => write!(f, "SKIP  {} / {}: {}", self.workflow, self.name, m),
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.cases {
            writeln!(f, "{c}")?;
        }
        write!(
            f,
            "{} passed, {} failed, {} skipped",
            self.passed(),
            self.failed(),
            self.skipped()
        )
    }
}

/// Error value that turns a case into a skip (the Go suite's `RunOnlyIf` / `g.Skip`).
#[derive(Debug)]
pub struct Skipped(pub String);

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "skipped: {}", self.0)
    }
}

impl std::error::Error for Skipped {}

/// Build the error that marks the current case as skipped.
pub fn skip(reason: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Skipped(reason.into()))
}

/// Runs cases of one workflow and records their outcome.
pub struct Runner {
    workflow: Workflow,
    section: &'static str,
    report: Report,
}

impl Runner {
    pub fn new(workflow: Workflow) -> Self {
        Self {
            workflow,
            section: "",
            report: Report::default(),
        }
    }

    /// Start a new context (`Setup`, `Pull blobs`, ...).
    pub fn section(&mut self, name: &'static str) {
        self.section = name;
    }

    /// Run one case; returns true when it passed.
    pub async fn case<F>(&mut self, name: &str, fut: F) -> bool
    where
        F: Future<Output = anyhow::Result<()>>,
    {
        let outcome = match fut.await {
            Ok(()) => Outcome::Pass,
            Err(e) => match e.downcast_ref::<Skipped>() {
                Some(Skipped(reason)) => Outcome::Skip(reason.clone()),
                None => Outcome::Fail(format!("{e:#}")),
            },
        };
        let passed = outcome == Outcome::Pass;
        let name = if self.section.is_empty() {
            name.to_string()
        } else {
            format!("{} / {}", self.section, name)
        };
        self.report.cases.push(CaseResult {
            workflow: self.workflow,
            name,
            outcome,
        });
        passed
    }

    pub fn finish(self) -> Report {
        self.report
    }
}
