//! Timestamps as the API server writes them (`metav1.Time`: RFC 3339, whole seconds, UTC) and
//! ages as `kubectl get` shows them (`duration.HumanDuration`).

use jiff::Timestamp;

/// Now, as `2026-05-01T12:00:00Z`.
pub fn now() -> String {
    rfc3339(Timestamp::now())
}

fn rfc3339(t: Timestamp) -> String {
    match Timestamp::from_second(t.as_second()) {
        Ok(whole) => whole.to_string(),
        Err(_) => t.to_string(),
    }
}

/// Seconds since an RFC 3339 time, `None` when it does not parse.
pub fn seconds_since(ts: &str) -> Option<i64> {
    let then: Timestamp = ts.parse().ok()?;
    Some(Timestamp::now().as_second() - then.as_second())
}

/// `k8s.io/apimachinery/pkg/util/duration.HumanDuration`, from seconds.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        return if dy == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{dy}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_as_kubectl_prints_them() {
        for (s, want) in [
            (5, "5s"),
            (119, "119s"),
            (120, "2m"),
            (125, "2m5s"),
            (600, "10m"),
            (3 * 3600, "3h"),
            (3 * 3600 + 60, "3h1m"),
            (47 * 3600, "47h"),
            (50 * 3600, "2d2h"),
            (30 * 86400, "30d"),
        ] {
            assert_eq!(human_duration(s), want, "{s}");
        }
    }

    #[test]
    fn now_is_whole_seconds_utc() {
        let n = now();
        assert!(n.ends_with('Z') && !n.contains('.'), "{n}");
        assert_eq!(seconds_since(&n).map(|s| s.abs() <= 2), Some(true));
    }
}
