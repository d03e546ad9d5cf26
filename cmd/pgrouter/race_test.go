//go:build race

package main

// raceEnabled is true under the race detector, whose shadow memory
// multiplies a process's memory use: memory budgets in tests scale with it.
const raceEnabled = true
