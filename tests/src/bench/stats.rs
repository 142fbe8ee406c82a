//! Medians and spreads of repeated measurements.

/// The median of the finite values (the mean of the middle two for an even
/// count); `None` when there is none.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len().is_multiple_of(2) {
        f64::midpoint(sorted[mid - 1], sorted[mid])
    } else {
        sorted[mid]
    })
}

/// How far repeated runs of one measurement fell apart.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Spread {
    /// The smallest run.
    pub min: f64,
    /// The largest run.
    pub max: f64,
    /// `(max - min) / median`: 0.1 means the runs spanned 10% of the median.
    pub relative: f64,
}

/// The spread of the finite values; `None` when there is none.
pub fn spread(values: &[f64]) -> Option<Spread> {
    let finite = || values.iter().copied().filter(|v| v.is_finite());
    let min = finite().reduce(f64::min)?;
    let max = finite().reduce(f64::max)?;
    let median = median(values)?;
    let relative = if median == 0.0 {
        0.0
    } else {
        (max - min) / median.abs()
    };
    Some(Spread { min, max, relative })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[7.0]), Some(7.0));
    }

    #[test]
    fn median_ignores_missing_values() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN]), None);
        assert_eq!(median(&[f64::NAN, 5.0, 1.0, f64::INFINITY]), Some(3.0));
    }

    #[test]
    fn spread_is_range_over_median() {
        let s = spread(&[9.0, 10.0, 11.0]).expect("values");
        assert_eq!((s.min, s.max), (9.0, 11.0));
        assert!((s.relative - 0.2).abs() < 1e-12, "{s:?}");
        assert_eq!(spread(&[]), None);
        assert_eq!(spread(&[0.0, 0.0]).map(|s| s.relative), Some(0.0));
    }
}
