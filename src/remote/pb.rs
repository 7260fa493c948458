//! The protobuf messages of remote write 1.0 (`prompb/remote.proto` and `types.proto`), only
//! the fields Perch reads or writes; the others are skipped by the decoder and never written.

/// `prometheus.WriteRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
    /// `MetricMetadata`, not used.
    #[prost(message, repeated, tag = "3")]
    pub metadata: Vec<Ignored>,
}

/// `prometheus.TimeSeries`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
    /// `Exemplar`s, counted and dropped.
    #[prost(message, repeated, tag = "3")]
    pub exemplars: Vec<Ignored>,
    /// Native `Histogram`s, counted and dropped.
    #[prost(message, repeated, tag = "4")]
    pub histograms: Vec<Ignored>,
}

impl TimeSeries {
    /// A series of float samples (no exemplars, no histograms): what Perch sends.
    pub fn new(labels: Vec<Label>, samples: Vec<Sample>) -> TimeSeries {
        TimeSeries {
            labels,
            samples,
            exemplars: Vec::new(),
            histograms: Vec::new(),
        }
    }
}

/// `prometheus.Label`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `prometheus.Sample`.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// Any message whose content is skipped (takes no memory).
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct Ignored {}
