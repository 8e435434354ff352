//! Aggregate: closed sessions → per-customer rows, the product's output.

use crate::session::ClosedSession;
use serde::Serialize;

/// One output row: a customer's session and what happened in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionRow {
    /// Customer id.
    pub customer_id: Box<str>,
    /// First event, UTC epoch ms.
    pub session_start: i64,
    /// Last event, UTC epoch ms.
    pub session_end: i64,
    /// `session_end - session_start`.
    pub duration_ms: i64,
    /// Events in the session.
    pub event_count: u64,
    /// Page and screen views.
    pub page_views: u64,
    /// Hovers over the subscribe button.
    pub subscribe_hovers: u64,
    /// Clicks on the subscribe button.
    pub subscribe_clicks: u64,
    /// Support calls.
    pub support_calls: u64,
    /// The schema sets (`name@version,…`) that extracted the session's events: one, or the
    /// first and the last when the set was reloaded during the session.
    pub schema_sets: Vec<String>,
}

impl SessionRow {
    /// The row of a closed session; `sets` names the schema sets by index.
    #[must_use]
    pub fn fold(c: ClosedSession, sets: &[String]) -> SessionRow {
        let (s, n) = (c.session, c.session.counts);
        let name = |i: u32| sets.get(i as usize).cloned().unwrap_or_else(|| format!("#{i}"));
        let (first, last) = s.schema_sets;
        let mut schema_sets = vec![name(first)];
        if last != first {
            schema_sets.push(name(last));
        }
        SessionRow {
            customer_id: c.customer_id,
            session_start: s.start,
            session_end: s.end,
            duration_ms: s.end - s.start,
            event_count: n.events,
            page_views: n.page_views,
            subscribe_hovers: n.subscribe_hovers,
            subscribe_clicks: n.subscribe_clicks,
            support_calls: n.support_calls,
            schema_sets,
        }
    }

    /// The UTC date of the session start, `YYYY-MM-DD`: the output partition.
    #[must_use]
    pub fn date(&self) -> String {
        utc_date(self.session_start)
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` of a UTC epoch-millisecond time.
#[must_use]
pub fn utc_datetime(ms: i64) -> String {
    let secs = ms.div_euclid(1000).rem_euclid(86_400);
    format!("{}T{:02}:{:02}:{:02}Z", utc_date(ms), secs / 3600, secs / 60 % 60, secs % 60)
}

/// `YYYY-MM-DD` of a UTC epoch-millisecond time (proleptic Gregorian).
#[must_use]
pub fn utc_date(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{Counts, Session};

    #[test]
    fn dates() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(1_709_510_400_000), "2024-03-04");
        assert_eq!(utc_date(1_709_510_399_999), "2024-03-03");
        assert_eq!(utc_date(951_782_400_000), "2000-02-29");
        assert_eq!(utc_date(4_102_444_799_999), "2099-12-31");
        assert_eq!(utc_datetime(1_709_510_399_999), "2024-03-03T23:59:59Z");
        assert_eq!(utc_datetime(1_709_514_061_000), "2024-03-04T01:01:01Z");
    }

    #[test]
    fn fold_and_shape() {
        let c = ClosedSession {
            customer_id: "433120".into(),
            session: Session {
                start: 10,
                end: 25,
                counts: Counts {
                    events: 3,
                    page_views: 1,
                    subscribe_hovers: 1,
                    subscribe_clicks: 1,
                    support_calls: 0,
                },
                schema_sets: (0, 1),
            },
        };
        let row = SessionRow::fold(c, &["web@1".into(), "web@2".into()]);
        assert_eq!(
            serde_json::to_string(&row).unwrap(),
            r#"{"customer_id":"433120","session_start":10,"session_end":25,"duration_ms":15,"event_count":3,"page_views":1,"subscribe_hovers":1,"subscribe_clicks":1,"support_calls":0,"schema_sets":["web@1","web@2"]}"#
        );
    }
}
