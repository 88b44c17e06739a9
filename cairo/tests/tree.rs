//! The reduce programs, run in cairo-vm (no proving): every node's output is compared with a
//! native computation, and children that do not tile the node are refused by the program itself.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use rand::{Rng, SeedableRng};
use starkscale_cairo::program::Pinned;
use starkscale_cairo::run::{run_reduce, DEFAULT_MAX_STEPS};
use starkscale_cairo::tree::{
    commit_matrix, commit_vector, Child, NodeOutput, ReduceInput, RootOutput,
};
use starkscale_cairo::{run_map, TileInput};
use starkscale_common::plan::NodeSpec;
use starkscale_common::{Dtype, Matrix, TilePlan, Vector};

fn random_job(rows: usize, cols: usize, seed: u64) -> (Matrix, Vector) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let a = (0..rows * cols)
        .map(|_| rng.gen_range(-128..=127))
        .collect();
    let x = (0..cols).map(|_| rng.gen_range(-128..=127)).collect();
    (
        Matrix::new(rows, cols, Dtype::I8, a).unwrap(),
        Vector::new(Dtype::I8, x).unwrap(),
    )
}

/// Map children of every tile, by running the kernel.
fn map_children(a: &Matrix, x: &Vector, plan: &TilePlan) -> Vec<Child> {
    plan.tiles()
        .map(|t| {
            let tile = TileInput::new(
                t.row0 as u32,
                t.col0 as u32,
                a.tile(t.row0, t.col0, t.rows, t.cols),
                x.block(t.col0, t.cols),
            )
            .unwrap();
            Child {
                program_hash: Pinned::Map.hash(),
                output: run_map(&tile, DEFAULT_MAX_STEPS).unwrap().output.to_words(),
            }
        })
        .collect()
}

fn node_input(plan: &TilePlan, node: &NodeSpec, tasks: &[Child]) -> ReduceInput {
    let children = node.children.iter().map(|&c| tasks[c].clone()).collect();
    ReduceInput::for_node(plan, node, children)
}

/// Runs the whole tree; returns every task's child record (tiles, then nodes).
fn reduce_all(plan: &TilePlan, tree: &[NodeSpec], mut tasks: Vec<Child>) -> Vec<Child> {
    for node in tree {
        let input = node_input(plan, node, &tasks);
        let run = run_reduce(&input, DEFAULT_MAX_STEPS).unwrap();
        let program = if node.root {
            Pinned::Root
        } else {
            Pinned::Reduce
        };
        if !node.root {
            let out = NodeOutput::from_words(&run.output).unwrap();
            assert_eq!(
                (out.row0 as usize, out.rows as usize),
                (node.row0, node.rows)
            );
            assert_eq!(out.row_roots.len(), node.blocks);
            let facts: Vec<_> = input.children.iter().map(Child::fact).collect();
            assert_eq!(
                out.facts, facts,
                "a node states its children's facts in order"
            );
        }
        tasks.push(Child {
            program_hash: program.hash(),
            output: run.output,
        });
    }
    tasks
}

#[test]
fn trees_of_every_shape_state_the_product_and_the_commitments() {
    // (rows, cols, tile_rows, fan_in): root over tiles; one level of nodes; three levels with
    // more column tiles than the fan-in; a short last row block and a narrow last column.
    for (rows, cols, tile_rows, fan_in, seed) in [
        (5, 1100, 2, 32, 1),
        (7, 2049, 2, 4, 2),
        (7, 2049, 2, 2, 3),
        (3, 30, 2, 2, 4),
    ] {
        let (a, x) = random_job(rows, cols, seed);
        let plan = TilePlan::new(rows, cols, tile_rows);
        let tree = plan.reduce_tree(fan_in);
        let tasks = reduce_all(&plan, &tree, map_children(&a, &x, &plan));
        let root = RootOutput::from_words(&tasks.last().unwrap().output).unwrap();
        let label = format!("{rows}x{cols} / {tile_rows} rows, fan-in {fan_in}");
        assert_eq!(root.y, a.matvec(&x).unwrap(), "{label}");
        assert_eq!(
            root.a_commitment,
            commit_matrix(&a, tile_rows, 1024),
            "{label}"
        );
        assert_eq!(root.x_commitment, commit_vector(&x, 1024), "{label}");
        assert_eq!(
            (root.rows, root.cols, root.tile_rows, root.tile_cols),
            (rows as u32, cols as u32, tile_rows as u32, 1024)
        );
        let root_node = tree.last().unwrap();
        let facts: Vec<_> = root_node
            .children
            .iter()
            .map(|&c| tasks[c].fact())
            .collect();
        assert_eq!(root.facts, facts, "{label}");
    }
}

#[test]
fn the_programs_refuse_children_that_do_not_tile_the_node() {
    let (a, x) = random_job(4, 2048, 7);
    let plan = TilePlan::new(4, 2048, 2);
    let tree = plan.reduce_tree(32);
    let tiles = map_children(&a, &x, &plan);
    let root = tree.last().unwrap();
    let honest = node_input(&plan, root, &tiles);
    assert!(run_reduce(&honest, DEFAULT_MAX_STEPS).is_ok());

    let refused = |input: ReduceInput, what: &str| {
        assert!(
            run_reduce(&input, DEFAULT_MAX_STEPS).is_err(),
            "the root accepted {what}"
        );
    };
    let mut swapped = honest.clone();
    swapped.children.swap(0, 1);
    refused(swapped, "two swapped tiles");
    let mut missing = honest.clone();
    missing.children.remove(3);
    refused(missing, "a missing tile");
    let mut duplicated = honest.clone();
    duplicated.children[1] = duplicated.children[0].clone();
    refused(duplicated, "a duplicated tile");
    let mut other_x = honest.clone();
    let (_, x2) = random_job(4, 2048, 8);
    other_x.children[2] = map_children(&a, &x2, &plan)[2].clone();
    refused(other_x, "a tile of another x");
    let mut short = honest.clone();
    short.rows = 3;
    refused(short, "a node claiming fewer rows than its tiles");
}
