//! The ECI size table (the product manual's vCPU/memory combinations) and normalisation to it:
//! eci validates container groups with it, the shim sizes pod VMs with it.

/// (vCPU, allowed memory sizes in GiB), both ascending.
pub const SIZE_TABLE: &[(f64, &[f64])] = &[
    (0.25, &[0.5, 1.0]),
    (0.5, &[1.0, 2.0]),
    (1.0, &[2.0, 4.0, 8.0]),
    (2.0, &[1.0, 2.0, 4.0, 8.0, 16.0]),
    (4.0, &[2.0, 4.0, 8.0, 16.0, 32.0]),
    (8.0, &[4.0, 8.0, 16.0, 32.0, 64.0]),
    (12.0, &[12.0, 24.0, 48.0, 96.0]),
    (16.0, &[16.0, 32.0, 64.0, 128.0]),
    (24.0, &[24.0, 48.0, 96.0, 192.0]),
    (32.0, &[32.0, 64.0, 128.0, 256.0]),
    (52.0, &[96.0, 192.0, 384.0]),
    (64.0, &[128.0, 256.0, 512.0]),
];

/// Tolerance for comparing user-given floats with table entries (0.1 + 0.15 must equal 0.25).
const EPSILON: f64 = 1e-9;

/// Why a size cannot be normalised; each names the field it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SizeError {
    Cpu(String),
    Memory(String),
}

/// The smallest table size holding `cpu` vCPUs and `memory` GiB: the smallest table vCPU >=
/// cpu, then the smallest memory of that row >= memory, moving to the next rows when none fits
/// (7 vCPU + 13 GiB -> 8 + 16; 2 vCPU + 20 GiB -> 4 + 32).
pub fn normalise(cpu: f64, memory: f64) -> Result<(f64, f64), SizeError> {
    if !cpu.is_finite() || cpu <= 0.0 {
        return Err(SizeError::Cpu(format!(
            "must be a positive number, got {cpu}"
        )));
    }
    if !memory.is_finite() || memory <= 0.0 {
        return Err(SizeError::Memory(format!(
            "must be a positive number, got {memory}"
        )));
    }
    let (max_cpu, _) = SIZE_TABLE[SIZE_TABLE.len() - 1];
    if cpu > max_cpu + EPSILON {
        return Err(SizeError::Cpu(format!(
            "{cpu} vCPU exceeds the largest size ({max_cpu} vCPU)"
        )));
    }
    SIZE_TABLE
        .iter()
        .filter(|(row_cpu, _)| *row_cpu + EPSILON >= cpu)
        .find_map(|(row_cpu, memories)| {
            memories
                .iter()
                .find(|row_memory| **row_memory + EPSILON >= memory)
                .map(|row_memory| (*row_cpu, *row_memory))
        })
        .ok_or_else(|| {
            SizeError::Memory(format!(
                "{memory} GiB with {cpu} vCPU exceeds every size of the table"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_sizes_stay() {
        for (cpu, memories) in SIZE_TABLE {
            for memory in *memories {
                assert_eq!(normalise(*cpu, *memory), Ok((*cpu, *memory)));
            }
        }
    }

    #[test]
    fn rounds_up_to_the_next_size() {
        assert_eq!(normalise(7.0, 13.0), Ok((8.0, 16.0)));
        assert_eq!(normalise(0.1, 0.1), Ok((0.25, 0.5)));
        assert_eq!(normalise(0.3, 1.5), Ok((0.5, 2.0)));
        assert_eq!(normalise(1.5, 1.0), Ok((2.0, 1.0)));
        // No 1-vCPU row holds 16 GiB: move on to 2 vCPU.
        assert_eq!(normalise(1.0, 16.0), Ok((2.0, 16.0)));
        assert_eq!(normalise(2.0, 20.0), Ok((4.0, 32.0)));
        assert_eq!(normalise(40.0, 10.0), Ok((52.0, 96.0)));
        assert_eq!(normalise(0.1 + 0.15, 0.5), Ok((0.25, 0.5)));
    }

    #[test]
    fn beyond_the_table_is_an_error_naming_the_field() {
        assert!(matches!(normalise(65.0, 128.0), Err(SizeError::Cpu(_))));
        assert!(matches!(normalise(64.0, 600.0), Err(SizeError::Memory(_))));
        assert!(matches!(normalise(0.0, 1.0), Err(SizeError::Cpu(_))));
        assert!(matches!(normalise(1.0, -1.0), Err(SizeError::Memory(_))));
        assert!(matches!(normalise(f64::NAN, 1.0), Err(SizeError::Cpu(_))));
    }
}
