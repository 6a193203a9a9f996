import assert from 'node:assert/strict';
import test from 'node:test';
import { RunTable } from '../../workers/run-table.ts';

test('run table — a run is found on the thread that claimed it, and no longer once released', () => {
  const table = RunTable.create(2, 3);
  const first = table.attach(1, 101)!;
  const second = new RunTable(table.buffer).attach(2, 202)!; // another thread's view of the same memory
  const a = first.claim(7);
  const b = second.claim(8);
  assert.equal(table.threadOf(7), 101);
  assert.equal(table.threadOf(8), 202);
  assert.equal(table.threadOf(9), undefined);
  first.release(a, 7);
  second.release(b, 8);
  assert.equal(table.threadOf(7), undefined);
  assert.equal(table.threadOf(8), undefined);
});

test('run table — a thread holds at most tasksPerThread runs; a full row says so', () => {
  const table = RunTable.create(1, 2);
  const row = table.attach(1, 5)!;
  assert.ok(row.claim(1) >= 0);
  assert.ok(row.claim(2) >= 0);
  assert.equal(row.claim(3), -1);
});

test('run table — a thread that replaces a stopped one clears the row; the stopped one cannot free its cells', () => {
  const table = RunTable.create(1, 1);
  const stopped = table.attach(1, 10)!;
  const cell = stopped.claim(41);
  const successor = table.attach(1, 11)!; // same tinypool worker id, new thread
  assert.equal(table.threadOf(41), undefined);
  assert.ok(successor.claim(42) >= 0);
  stopped.release(cell, 41); // a late write from the stopped thread
  assert.equal(table.threadOf(42), 11);
});

test('run table — a worker id outside the table gets no row', () => {
  const table = RunTable.create(2, 1);
  assert.equal(table.attach(0, 1), undefined);
  assert.equal(table.attach(3, 1), undefined);
});
