//! Classification quality from (gold, predicted, confidence) triples: accuracy, macro-F1, the
//! confusion matrix, expected calibration error and its reliability bins.

use serde::Serialize;

/// One scored example.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// Index of the true label.
    pub gold: usize,
    /// Label probabilities (after the task's temperature).
    pub probs: Vec<f32>,
    /// Probability of the labels' first tokens out of the whole vocabulary.
    pub label_mass: f32,
}

impl Example {
    /// The most probable label.
    pub fn predicted(&self) -> usize {
        crate::engine::scoring::argmax(&self.probs)
    }

    /// The predicted label's probability.
    pub fn confidence(&self) -> f64 {
        f64::from(self.probs[self.predicted()])
    }
}

/// One confidence bin of a reliability diagram.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bin {
    /// Lower edge (inclusive, except the first bin which also takes 0).
    pub lo: f64,
    /// Upper edge.
    pub hi: f64,
    /// Examples in the bin.
    pub count: usize,
    /// Their mean confidence.
    pub confidence: f64,
    /// Their accuracy.
    pub accuracy: f64,
}

/// Quality of one task's predictions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Quality {
    /// Examples.
    pub n: usize,
    /// Share predicted right.
    pub accuracy: f64,
    /// Mean over labels of F1 (a label neither in the data nor predicted is left out).
    pub macro_f1: f64,
    /// `confusion[gold][predicted]`.
    pub confusion: Vec<Vec<usize>>,
    /// Expected calibration error over [`BINS`] equal-width confidence bins.
    pub ece: f64,
    /// Mean label mass.
    pub mean_label_mass: f64,
    /// Reliability bins (empty bins included, count 0).
    pub bins: Vec<Bin>,
}

/// Confidence bins of the calibration error.
pub const BINS: usize = 10;

/// Scores `examples` of a task with `labels` labels.
pub fn quality(examples: &[Example], labels: usize) -> Quality {
    let n = examples.len();
    let mut confusion = vec![vec![0usize; labels]; labels];
    for e in examples {
        confusion[e.gold][e.predicted()] += 1;
    }
    let right: usize = (0..labels).map(|i| confusion[i][i]).sum();
    let mut f1s = Vec::new();
    for l in 0..labels {
        let tp = confusion[l][l] as f64;
        let gold: usize = confusion[l].iter().sum();
        let predicted: usize = confusion.iter().map(|row| row[l]).sum();
        if gold == 0 && predicted == 0 {
            continue;
        }
        let p = if predicted > 0 {
            tp / predicted as f64
        } else {
            0.0
        };
        let r = if gold > 0 { tp / gold as f64 } else { 0.0 };
        f1s.push(if p + r > 0.0 {
            2.0 * p * r / (p + r)
        } else {
            0.0
        });
    }
    let bins = reliability(examples);
    let ece = bins
        .iter()
        .map(|b| b.count as f64 / n.max(1) as f64 * (b.accuracy - b.confidence).abs())
        .sum();
    Quality {
        n,
        accuracy: right as f64 / n.max(1) as f64,
        macro_f1: if f1s.is_empty() {
            0.0
        } else {
            f1s.iter().sum::<f64>() / f1s.len() as f64
        },
        confusion,
        ece,
        mean_label_mass: examples
            .iter()
            .map(|e| f64::from(e.label_mass))
            .sum::<f64>()
            / n.max(1) as f64,
        bins,
    }
}

/// Equal-width confidence bins with each one's mean confidence and accuracy.
pub fn reliability(examples: &[Example]) -> Vec<Bin> {
    let mut sums = vec![(0usize, 0.0f64, 0usize); BINS];
    for e in examples {
        let c = e.confidence();
        // Bins are (lo, hi]; probabilities are f32, so an edge is matched within 1e-6.
        let b = ((c * BINS as f64 - 1e-6).ceil() as usize).clamp(1, BINS) - 1;
        sums[b].0 += 1;
        sums[b].1 += c;
        sums[b].2 += usize::from(e.predicted() == e.gold);
    }
    sums.iter()
        .enumerate()
        .map(|(i, &(count, conf, right))| Bin {
            lo: i as f64 / BINS as f64,
            hi: (i + 1) as f64 / BINS as f64,
            count,
            confidence: if count > 0 { conf / count as f64 } else { 0.0 },
            accuracy: if count > 0 {
                right as f64 / count as f64
            } else {
                0.0
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(gold: usize, probs: &[f32]) -> Example {
        Example {
            gold,
            probs: probs.to_vec(),
            label_mass: 0.5,
        }
    }

    #[test]
    fn accuracy_f1_confusion_by_hand() {
        // gold a a b c ; predicted a b b a
        let e = [
            ex(0, &[0.9, 0.05, 0.05]),
            ex(0, &[0.2, 0.7, 0.1]),
            ex(1, &[0.1, 0.6, 0.3]),
            ex(2, &[0.5, 0.2, 0.3]),
        ];
        let q = quality(&e, 3);
        assert_eq!(q.n, 4);
        assert_eq!(q.accuracy, 0.5);
        assert_eq!(
            q.confusion,
            vec![vec![1, 1, 0], vec![0, 1, 0], vec![1, 0, 0]]
        );
        // a: p 1/2 r 1/2 f 1/2; b: p 1/2 r 1 f 2/3; c: p 0 r 0 f 0 -> mean 7/18.
        assert!((q.macro_f1 - 7.0 / 18.0).abs() < 1e-12);
        assert_eq!(q.mean_label_mass, 0.5);
    }

    #[test]
    fn ece_is_the_weighted_gap_between_confidence_and_accuracy() {
        // Two examples at confidence 0.9 (one right), two at 0.6 (both right).
        let e = [
            ex(0, &[0.9, 0.1]),
            ex(1, &[0.9, 0.1]),
            ex(0, &[0.6, 0.4]),
            ex(0, &[0.6, 0.4]),
        ];
        let q = quality(&e, 2);
        // bin 0.9: |0.5 - 0.9| * 2/4 = 0.2 ; bin 0.6: |1.0 - 0.6| * 2/4 = 0.2
        assert!((q.ece - 0.4).abs() < 1e-6, "{}", q.ece);
        assert_eq!(q.bins.iter().map(|b| b.count).sum::<usize>(), 4);
        assert_eq!(q.bins[8].count, 2);
        assert_eq!(q.bins[5].count, 2);
        // Perfectly calibrated: confidence 1 and always right.
        let perfect = [ex(0, &[1.0, 0.0]), ex(1, &[0.0, 1.0])];
        assert_eq!(quality(&perfect, 2).ece, 0.0);
    }
}
