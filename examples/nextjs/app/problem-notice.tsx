"use client";
import { useEffect, useState } from "react";
import type { Problem } from "@/lib/shapes";

/** Seconds left until `until` (a Date.now() value), ticking once a second; 0 once it passed. */
export function useSecondsLeft(until: number | null): number {
  const [now, setNow] = useState(() => Date.now());
  useEffect(() => {
    if (until === null) return;
    const timer = setInterval(() => setNow(Date.now()), 1000);
    return () => clearInterval(timer);
  }, [until]);
  return until === null ? 0 : Math.max(0, Math.ceil((until - now) / 1000));
}

/**
 * The problem a page shows, if any, and how long it asks the person to wait: `report` shows one
 * (and, when it says when to retry, counts down to then), `clear` hides it.
 */
export function useProblem() {
  const [problem, setProblem] = useState<Problem | null>(null);
  const [blockedUntil, setBlockedUntil] = useState<number | null>(null);
  const secondsLeft = useSecondsLeft(blockedUntil);
  return {
    problem,
    secondsLeft,
    report(next: Problem | undefined) {
      const shown = next ?? { title: "Something went wrong", message: "Please try again." };
      setProblem(shown);
      if (shown.retryAfterSeconds !== undefined) setBlockedUntil(Date.now() + shown.retryAfterSeconds * 1000);
    },
    clear: () => setProblem(null),
  };
}

/** A problem as a person reads it: what happened, what to do, and a countdown when it helps. */
export function ProblemNotice({ problem, secondsLeft }: { problem: Problem; secondsLeft?: number }) {
  return (
    <div className="problem" role="alert">
      <h2>{problem.title}</h2>
      <p>{problem.message}</p>
      {secondsLeft !== undefined && secondsLeft > 0 && secondsLeft < 120 ? (
        <p>Ready again in {secondsLeft} s.</p>
      ) : null}
    </div>
  );
}
