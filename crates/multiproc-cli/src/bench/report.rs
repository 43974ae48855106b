//! What a bench run measured: every figure with its spread and its comparisons, printed as
//! table rows while the run goes, and written as JSON (`--json`) and charts (`--chart`).

use std::collections::HashMap;

use serde::Serialize;

use super::place::{self, Ends, Placement};
use super::python::{self, Figures};
use super::stats::{Samples, human};

/// How big a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Size {
    /// The smallest sizes that still exercise every path (the tests).
    Tiny,
    /// About a minute for everything on 2 cores (the default).
    Quick,
    /// Numbers to quote.
    Full,
}

impl Size {
    /// The value for this size.
    pub(crate) fn pick<T>(self, tiny: T, quick: T, full: T) -> T {
        match self {
            Size::Tiny => tiny,
            Size::Quick => quick,
            Size::Full => full,
        }
    }

    /// The most a single latency measurement may take (it stops early, with its figure, when
    /// waiting goes badly in some placement).
    pub(crate) fn budget(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.pick(50, 500, 3_000))
    }
}

/// The unit of a figure, which also says which direction is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) enum Unit {
    /// Seconds (lower is better).
    #[serde(rename = "s")]
    Secs,
    /// Operations per second (higher is better).
    #[serde(rename = "1/s")]
    Rate,
    /// Bytes per second (higher is better).
    #[serde(rename = "B/s")]
    Bandwidth,
    /// A plain factor (higher is better: a speed-up).
    #[serde(rename = "x")]
    Factor,
}

impl Unit {
    pub(crate) fn lower_is_better(self) -> bool {
        matches!(self, Unit::Secs)
    }

    /// `value` for a reader.
    pub(crate) fn show(self, value: f64) -> String {
        if !value.is_finite() {
            return "-".into();
        }
        match self {
            Unit::Secs => human(value),
            Unit::Rate if value >= 1e6 => format!("{:.2} M/s", value / 1e6),
            Unit::Rate if value >= 1e3 => format!("{:.1} k/s", value / 1e3),
            Unit::Rate => format!("{value:.0}/s"),
            Unit::Bandwidth => format!("{:.2} GB/s", value / 1e9),
            Unit::Factor => format!("{value:.2}x"),
        }
    }
}

/// One comparison of a figure: `ratio` = ours / reference.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Versus {
    pub what: String,
    pub reference: f64,
    pub ratio: f64,
}

impl Versus {
    /// How many times better ours is (above 1) or worse (below 1).
    pub(crate) fn advantage(&self, unit: Unit) -> f64 {
        if unit.lower_is_better() {
            1.0 / self.ratio
        } else {
            self.ratio
        }
    }
}

/// One measured figure.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Figure {
    pub group: String,
    pub name: String,
    pub unit: Unit,
    /// The median (the best, for the PEP's best-of tables).
    pub value: f64,
    pub min: f64,
    pub median: f64,
    pub max: f64,
    pub n: usize,
    /// Where the processes of the measurement ran.
    pub placement: Placement,
    pub versus: Vec<Versus>,
}

/// `ours / reference`, the way the tables print ratios (NaN without a reference).
pub(crate) fn ratio(ours: f64, reference: f64) -> f64 {
    if reference > 0.0 && reference.is_finite() {
        ours / reference
    } else {
        f64::NAN
    }
}

/// The machine a run measured.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub start_method: String,
    pub python: Option<String>,
}

impl Machine {
    pub(crate) fn probe() -> Machine {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|m| m.trim().to_string())
            })
            .unwrap_or_else(|| "?".into());
        let python = std::process::Command::new("python3")
            .arg("--version")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        Machine {
            cpus: multiproc::cpu_count(),
            cpu_model,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "?".into()),
            start_method: multiproc::get_start_method().to_string(),
            python,
        }
    }
}

/// Everything a run measured, and what it needs while running.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub size: Size,
    pub machine: Machine,
    /// CPU-burning processes running beside the measurements (`--busy`).
    pub busy: usize,
    pub figures: Vec<Figure>,
    pub notes: Vec<String>,
    #[serde(skip)]
    pub python: bool,
    #[serde(skip)]
    peers: HashMap<String, Result<Figures, String>>,
    /// The CPUs the run may use (the pinned placements take theirs from these).
    #[serde(skip)]
    cpus: Vec<usize>,
    /// The placement of the rows being recorded.
    #[serde(skip)]
    placement: Placement,
}

impl Report {
    pub(crate) fn new(size: Size, python: bool, busy: usize) -> Report {
        Report {
            size,
            machine: Machine::probe(),
            busy,
            figures: Vec::new(),
            notes: Vec::new(),
            python,
            peers: HashMap::new(),
            cpus: place::allowed_cpus(),
            placement: Placement::Unpinned,
        }
    }

    /// Prints `note` and keeps it in the report, once per run.
    pub(crate) fn note(&mut self, note: String) {
        if !self.notes.contains(&note) {
            println!("note: {note}");
            self.notes.push(note);
        }
    }

    /// The placements to measure on this machine: unpinned, same CPU, across CPUs (with a
    /// note when there is a single CPU to run on).
    pub(crate) fn placements(&mut self) -> Vec<Ends> {
        let (ends, note) = place::placements(&self.cpus);
        if let Some(note) = note {
            self.note(note.to_string());
        }
        ends
    }

    /// Prints the heading of `ends`'s rows; the rows recorded from now on are in its
    /// placement.
    pub(crate) fn section(&mut self, ends: &Ends) {
        println!("-- {} --", ends.title());
        self.placement = ends.placement;
    }

    /// Prints the heading of `what` in `ends`'s placement; the rows recorded from now on are
    /// in it.
    pub(crate) fn section_named(&mut self, what: &str, ends: &Ends) {
        println!("-- {what}, {} --", ends.title());
        self.placement = ends.placement;
    }

    /// The figures of CPython peer `script` (run once per bench run), or why there are none.
    pub(crate) fn peer(&mut self, script: &str) -> Result<&Figures, String> {
        if !self.peers.contains_key(script) {
            let got = python::run(script, self.size, self.python);
            self.peers.insert(script.to_string(), got);
        }
        self.peers[script].as_ref().map_err(Clone::clone)
    }

    /// CPython's figure `name` of peer `script`, scaled into our unit.
    pub(crate) fn cpython(&mut self, script: &str, name: &str, scale: f64) -> Option<f64> {
        match self.peer(script) {
            Ok(f) => f.get(name).map(|(v, _)| v * scale),
            Err(note) => {
                self.note(note);
                None
            }
        }
    }

    /// Prints a group's heading; its rows are unpinned until a [`section`](Self::section)
    /// says otherwise.
    pub(crate) fn group(&mut self, title: &str) {
        self.placement = Placement::Unpinned;
        println!("\n== {title} ==");
        println!(
            "{:<44} {:>12} {:>24}   compared",
            "what", "median", "min..max"
        );
    }

    /// Records a figure from `samples` (its value is the median) and returns it for
    /// comparisons; [`Report::row`] prints it.
    pub(crate) fn add(
        &mut self,
        group: &str,
        name: &str,
        unit: Unit,
        samples: &Samples,
    ) -> &mut Figure {
        self.add_value(group, name, unit, samples, samples.median())
    }

    /// As [`add`](Self::add) with an explicit value (the best of a best-of table).
    pub(crate) fn add_value(
        &mut self,
        group: &str,
        name: &str,
        unit: Unit,
        samples: &Samples,
        value: f64,
    ) -> &mut Figure {
        self.figures.push(Figure {
            group: group.to_string(),
            name: name.to_string(),
            unit,
            value,
            min: samples.min(),
            median: samples.median(),
            max: samples.max(),
            n: samples.0.len(),
            placement: self.placement,
            versus: Vec::new(),
        });
        self.figures.last_mut().expect("just pushed")
    }

    /// Records and prints a row: `samples` compared with `refs` (what, reference value).
    pub(crate) fn row(
        &mut self,
        group: &str,
        name: &str,
        unit: Unit,
        samples: &Samples,
        refs: &[(&str, Option<f64>)],
    ) {
        let f = self.add(group, name, unit, samples);
        for (what, reference) in refs {
            if let Some(r) = reference {
                f.versus(what, *r);
            }
        }
        let f = f.clone();
        print_row(&f);
    }
}

impl Figure {
    /// Adds a comparison with `reference` (in the figure's unit).
    pub(crate) fn versus(&mut self, what: &str, reference: f64) -> &mut Self {
        self.versus.push(Versus {
            what: what.to_string(),
            reference,
            ratio: ratio(self.value, reference),
        });
        self
    }
}

/// `1.84x raw fork` for references we should be close to, `5.1x faster than CPython`
/// for CPython.
pub(crate) fn describe(v: &Versus, unit: Unit) -> String {
    if v.what.starts_with("CPython") {
        let adv = v.advantage(unit);
        if adv >= 1.0 {
            format!(
                "{:.1}x faster than {} ({})",
                adv,
                v.what,
                unit.show(v.reference)
            )
        } else {
            format!(
                "{:.1}x slower than {} ({})",
                1.0 / adv,
                v.what,
                unit.show(v.reference)
            )
        }
    } else if v.ratio < 0.1 {
        // Far below parity (a spinning reference on the CPU its peer needs): enough digits
        // to tell.
        format!("{:.3}x {}", v.ratio, v.what)
    } else {
        format!("{:.2}x {}", v.ratio, v.what)
    }
}

fn print_row(f: &Figure) {
    let spread = if f.n > 1 {
        format!("{}..{}", f.unit.show(f.min), f.unit.show(f.max))
    } else {
        String::new()
    };
    let notes: Vec<String> = f.versus.iter().map(|v| describe(v, f.unit)).collect();
    println!(
        "{:<44} {:>12} {:>24}   {}",
        f.name,
        f.unit.show(f.value),
        spread,
        notes.join(", ")
    );
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn ratios_and_advantages() {
        assert_eq!(ratio(2.0, 1.0), 2.0);
        assert!(ratio(1.0, 0.0).is_nan());
        assert!(ratio(1.0, f64::NAN).is_nan());
        let slower = Versus {
            what: "raw fork".into(),
            reference: 1.0,
            ratio: 2.0,
        };
        assert_eq!(slower.advantage(Unit::Secs), 0.5);
        assert_eq!(slower.advantage(Unit::Rate), 2.0);
        assert_eq!(describe(&slower, Unit::Secs), "2.00x raw fork");
        let far = Versus {
            what: "raw spinning".into(),
            reference: 1e-3,
            ratio: 0.004,
        };
        assert_eq!(describe(&far, Unit::Secs), "0.004x raw spinning");
        let py = Versus {
            what: "CPython".into(),
            reference: 40e-6,
            ratio: 0.25,
        };
        assert_eq!(
            describe(&py, Unit::Secs),
            "4.0x faster than CPython (40.0 µs)"
        );
        let py_rate = Versus {
            what: "CPython".into(),
            reference: 100.0,
            ratio: 0.5,
        };
        assert_eq!(
            describe(&py_rate, Unit::Rate),
            "2.0x slower than CPython (100/s)"
        );
    }

    #[test]
    fn figures_serialize_with_their_comparisons() {
        let mut r = Report::new(Size::Tiny, false, 1);
        r.add("g", "x", Unit::Secs, &Samples(vec![1.0, 3.0, 2.0]))
            .versus("raw", 1.0);
        r.section(&Ends {
            placement: Placement::CrossCpu,
            here: place::Cpu(Some(0)),
            there: place::Cpu(Some(1)),
        });
        r.add("g", "y", Unit::Secs, &Samples(vec![1.0]));
        r.group("h");
        r.add("h", "z", Unit::Secs, &Samples(vec![1.0]));
        let json: serde_json::Value = serde_json::to_value(&r).unwrap();
        let placements: Vec<&str> = json["figures"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["placement"].as_str().unwrap())
            .collect();
        assert_eq!(placements, ["unpinned", "cross-cpu", "unpinned"]);
        let f = &json["figures"][0];
        assert_eq!(f["group"], "g");
        assert_eq!(f["unit"], "s");
        assert_eq!(f["value"], 2.0);
        assert_eq!(
            (f["min"].as_f64(), f["max"].as_f64()),
            (Some(1.0), Some(3.0))
        );
        assert_eq!(f["versus"][0]["ratio"], 2.0);
        assert_eq!(json["size"], "tiny");
        assert_eq!(json["busy"], 1);
        assert!(json["machine"]["cpus"].as_u64().unwrap() >= 1);
    }

    #[test]
    fn units_show_for_readers() {
        assert_eq!(Unit::Rate.show(2_500_000.0), "2.50 M/s");
        assert_eq!(Unit::Rate.show(41_000.0), "41.0 k/s");
        assert_eq!(Unit::Bandwidth.show(3.2e9), "3.20 GB/s");
        assert_eq!(Unit::Factor.show(1.5), "1.50x");
        assert_eq!(Unit::Secs.show(f64::NAN), "-");
    }
}
