//! The OpenMetrics text exposition, for scrapers that ask for it.
//!
//! The registry of record is the `prometheus` crate's (see the parent
//! module); it has no OpenMetrics encoder. This module hands each gathered
//! family to `prometheus-client`, which writes the OpenMetrics format
//! (descriptors, `_total` on counter samples, `# EOF`). Nothing here writes
//! the format itself: it only maps one crate's data model onto the other's.

use prometheus::proto::{MetricFamily, MetricType};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType as OmType;
use prometheus_client::registry::Registry;

/// One scrape's families, gathered from the registry of record.
#[derive(Debug)]
struct Gathered(Vec<MetricFamily>);

impl Collector for Gathered {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for family in &self.0 {
            let kind = match family.get_field_type() {
                MetricType::COUNTER => OmType::Counter,
                MetricType::GAUGE => OmType::Gauge,
                MetricType::HISTOGRAM => OmType::Histogram,
                // Neither is registered by the broker; skipped rather than
                // mislabelled if one ever is.
                MetricType::SUMMARY | MetricType::UNTYPED => continue,
            };
            // OpenMetrics names a counter family without the suffix its
            // samples carry.
            let name = match kind {
                OmType::Counter => family
                    .name()
                    .strip_suffix("_total")
                    .unwrap_or(family.name()),
                _ => family.name(),
            };
            let mut family_encoder = encoder.encode_descriptor(name, family.help(), None, kind)?;
            for metric in family.get_metric() {
                let labels: Vec<(&str, &str)> = metric
                    .get_label()
                    .iter()
                    .map(|l| (l.name(), l.value()))
                    .collect();
                let sample = family_encoder.encode_family(&labels)?;
                encode_sample(sample, kind, metric)?;
            }
        }
        Ok(())
    }
}

fn encode_sample(
    mut sample: MetricEncoder<'_>,
    kind: OmType,
    metric: &prometheus::proto::Metric,
) -> Result<(), std::fmt::Error> {
    match kind {
        OmType::Counter => {
            sample.encode_counter::<NoLabelSet, _, f64>(&metric.get_counter().get_value(), None)
        }
        OmType::Histogram => {
            let h = metric.get_histogram();
            let buckets = per_bucket(
                h.get_bucket()
                    .iter()
                    .map(|b| (b.upper_bound(), b.cumulative_count())),
                h.get_sample_count(),
            );
            sample.encode_histogram::<NoLabelSet>(
                h.get_sample_sum(),
                h.get_sample_count(),
                &buckets,
                None,
            )
        }
        _ => sample.encode_gauge(&metric.get_gauge().get_value()),
    }
}

/// Cumulative bucket counts (the registry's) as counts per bucket
/// (`prometheus-client`'s), closed by the `+Inf` bucket, which the registry
/// leaves implicit in the sample count and `prometheus-client` spells as
/// `f64::INFINITY`.
fn per_bucket(cumulative: impl Iterator<Item = (f64, u64)>, count: u64) -> Vec<(f64, u64)> {
    let mut below = 0;
    let mut out: Vec<(f64, u64)> = cumulative
        .filter(|(bound, _)| bound.is_finite())
        .map(|(bound, total)| {
            let here = total.saturating_sub(below);
            below = total;
            (bound, here)
        })
        .collect();
    out.push((f64::INFINITY, count.saturating_sub(below)));
    out
}

/// The whole exposition, `# EOF` included.
pub fn encode(families: Vec<MetricFamily>) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Gathered(families)));
    let mut out = String::with_capacity(16 * 1024);
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::per_bucket;

    #[test]
    fn cumulative_buckets_become_counts_per_bucket_closed_by_inf() {
        let got = per_bucket([(0.1, 2), (1.0, 5), (10.0, 5)].into_iter(), 7);
        assert_eq!(got, vec![(0.1, 2), (1.0, 3), (10.0, 0), (f64::INFINITY, 2)]);
        assert_eq!(per_bucket(std::iter::empty(), 3), vec![(f64::INFINITY, 3)]);
        // An explicit +Inf bucket is not written twice.
        let got = per_bucket([(1.0, 1), (f64::INFINITY, 4)].into_iter(), 4);
        assert_eq!(got, vec![(1.0, 1), (f64::INFINITY, 3)]);
    }
}
