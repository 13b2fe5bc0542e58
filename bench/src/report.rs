//! The markdown report: one table (Manta, a peer — docker-registry unless told otherwise —,
//! ratio, goal) and the raw runs.

use std::fmt::Write as _;

/// A goal on a row of the table.
#[derive(Clone, Copy, Debug)]
pub enum Goal {
    /// The ratio at least this.
    RatioAtLeast(f64),
    /// The ratio at most this.
    RatioAtMost(f64),
    /// The ratio exactly this (for counts, such as bytes fetched ÷ bytes needed).
    RatioExactly(f64),
    /// Manta's figure below this (in the row's unit).
    MantaBelow(f64),
    /// Reported, no goal.
    None,
}

/// One measured figure for both servers.
#[derive(Clone, Debug)]
pub struct Row {
    pub what: String,
    pub unit: &'static str,
    pub manta: f64,
    /// The peer's figure (docker-registry's in the `registry` benchmark); NaN for none.
    pub docker: f64,
    pub goal: Goal,
    /// The ratio is peer ÷ Manta (a speed-up from times) rather than Manta ÷ peer.
    pub inverted: bool,
}

impl Row {
    pub fn new(
        what: impl Into<String>,
        unit: &'static str,
        manta: f64,
        docker: f64,
        goal: Goal,
    ) -> Self {
        Self {
            what: what.into(),
            unit,
            manta,
            docker,
            goal,
            inverted: false,
        }
    }

    /// Show (and judge) peer ÷ Manta instead.
    pub fn inverted(mut self) -> Self {
        self.inverted = true;
        self
    }

    fn ratio(&self) -> f64 {
        let (a, b) = if self.inverted {
            (self.docker, self.manta)
        } else {
            (self.manta, self.docker)
        };
        if b > 0.0 {
            a / b
        } else {
            f64::NAN
        }
    }

    fn goal_text(&self) -> String {
        match self.goal {
            Goal::RatioAtLeast(r) => format!("≥ {r:.1}×"),
            Goal::RatioAtMost(r) => format!("≤ {r}×"),
            Goal::RatioExactly(r) => format!("= {r:.1}×"),
            Goal::MantaBelow(v) => format!("Manta < {v:.0} {}", self.unit),
            Goal::None => "—".into(),
        }
    }

    fn met(&self) -> &'static str {
        let ok = match self.goal {
            Goal::RatioAtLeast(r) => self.ratio() >= r,
            Goal::RatioAtMost(r) => self.ratio() <= r,
            Goal::RatioExactly(r) => self.ratio() == r,
            Goal::MantaBelow(v) => self.manta < v,
            Goal::None => return "",
        };
        if ok {
            "yes"
        } else {
            "**no**"
        }
    }
}

fn fmt_value(v: f64) -> String {
    if v.is_nan() {
        "—".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// The load average over 1, 5 and 15 minutes (`/proc/loadavg`), for the report's header.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Prints the report on stdout and writes it to `out` (creating its directory).
pub fn publish(md: &str, out: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context as _;
    println!("{md}");
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    std::fs::write(out, md).with_context(|| format!("write {}", out.display()))
}

/// The table, in markdown, Manta against docker-registry.
pub fn table(rows: &[Row]) -> String {
    table_with(rows, "docker-registry", "Manta ÷ docker-registry")
}

/// The table with other headers for the peer's column and the ratio's.
pub fn table_with(rows: &[Row], peer: &str, ratio: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| measure | unit | Manta | {peer} | {ratio} | goal | met |"
    );
    s.push_str("| --- | --- | ---: | ---: | ---: | --- | --- |\n");
    for r in rows {
        let ratio = r.ratio();
        let ratio = if ratio.is_nan() {
            "—".to_owned()
        } else {
            format!("{ratio:.2}×")
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {ratio} | {} | {} |",
            r.what,
            r.unit,
            fmt_value(r.manta),
            fmt_value(r.docker),
            r.goal_text(),
            r.met()
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_ratio_goal_and_verdict() {
        let t = table(&[
            Row::new(
                "single-stream GET",
                "MB/s",
                1500.0,
                1000.0,
                Goal::RatioAtLeast(1.2),
            ),
            Row::new("peak RSS", "MiB", 70.0, 35.5, Goal::MantaBelow(64.0)),
            Row::new("upload", "MB/s", 900.0, 1000.0, Goal::RatioAtLeast(1.0)),
            Row::new("whole run RSS", "MiB", 40.0, 50.0, Goal::None),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 6);
        assert_eq!(
            lines[2],
            "| single-stream GET | MB/s | 1500 | 1000 | 1.50× | ≥ 1.2× | yes |"
        );
        assert_eq!(
            lines[3],
            "| peak RSS | MiB | 70.0 | 35.5 | 1.97× | Manta < 64 MiB | **no** |"
        );
        assert!(lines[4].ends_with("| 0.90× | ≥ 1.0× | **no** |"));
        assert!(lines[5].ends_with("| — |  |"));
    }

    #[test]
    fn other_peers_inverted_and_exact_goals() {
        let t = table_with(
            &[
                Row::new("warm", "s", 2.0, 30.0, Goal::RatioAtLeast(10.0)).inverted(),
                Row::new("cold", "s", 21.0, 20.0, Goal::RatioAtMost(1.05)),
                Row::new("bytes", "B", 4096.0, 4096.0, Goal::RatioExactly(1.0)),
                Row::new("rss", "MiB", 40.0, f64::NAN, Goal::MantaBelow(128.0)),
            ],
            "peer",
            "ratio",
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "| measure | unit | Manta | peer | ratio | goal | met |"
        );
        assert_eq!(
            lines[2],
            "| warm | s | 2.0 | 30.0 | 15.00× | ≥ 10.0× | yes |"
        );
        assert_eq!(
            lines[3],
            "| cold | s | 21.0 | 20.0 | 1.05× | ≤ 1.05× | yes |"
        );
        assert!(lines[4].ends_with("| 1.00× | = 1.0× | yes |"));
        assert_eq!(
            lines[5],
            "| rss | MiB | 40.0 | — | — | Manta < 128 MiB | yes |"
        );
    }
}
