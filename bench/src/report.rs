//! The markdown report: one table (Manta, docker-registry, ratio, goal) and the raw runs.

use std::fmt::Write as _;

/// A goal on a row of the table.
#[derive(Clone, Copy, Debug)]
pub enum Goal {
    /// Manta ÷ docker-registry at least this.
    RatioAtLeast(f64),
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
    pub docker: f64,
    pub goal: Goal,
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
        }
    }

    fn ratio(&self) -> f64 {
        if self.docker > 0.0 {
            self.manta / self.docker
        } else {
            f64::NAN
        }
    }

    fn goal_text(&self) -> String {
        match self.goal {
            Goal::RatioAtLeast(r) => format!("≥ {r:.1}×"),
            Goal::MantaBelow(v) => format!("Manta < {v:.0} {}", self.unit),
            Goal::None => "—".into(),
        }
    }

    fn met(&self) -> &'static str {
        let ok = match self.goal {
            Goal::RatioAtLeast(r) => self.ratio() >= r,
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
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// The table, in markdown.
pub fn table(rows: &[Row]) -> String {
    let mut s = String::new();
    s.push_str(
        "| measure | unit | Manta | docker-registry | Manta ÷ docker-registry | goal | met |\n",
    );
    s.push_str("| --- | --- | ---: | ---: | ---: | --- | --- |\n");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.2}× | {} | {} |",
            r.what,
            r.unit,
            fmt_value(r.manta),
            fmt_value(r.docker),
            r.ratio(),
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
}
