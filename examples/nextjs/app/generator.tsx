"use client";
// Generate: submit a job, then follow its events over Server-Sent Events. The job id goes into
// the address, so a reload (or a link) picks the job up again: the stream starts with its current
// state. A broken connection is resumed by the EventSource itself, with Last-Event-ID.
import { useEffect, useState, type FormEvent } from "react";
import type { JobEventView, Problem } from "@/lib/shapes";
import { ProblemNotice, useProblem } from "./problem-notice";

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const SUBMIT_ATTEMPTS = 3;

/**
 * POSTs a job, sending it again (up to SUBMIT_ATTEMPTS times) when it may not have arrived: a
 * network failure or a gateway that did not answer. The click's one idempotency key makes a
 * repeat join the job the first attempt may have queued, never queue a second.
 */
async function submit(job: { prompt: string; variations: number; idempotencyKey: string }): Promise<Response> {
  for (let attempt = 1; ; attempt++) {
    try {
      const response = await fetch("/api/jobs", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(job),
      });
      if (response.status !== 503 || attempt === SUBMIT_ATTEMPTS) return response;
    } catch (error) {
      if (attempt === SUBMIT_ATTEMPTS) throw error;
    }
    await new Promise((resume) => setTimeout(resume, 500 * attempt));
  }
}

export function Generator({ initialJobId }: { initialJobId: string | null }) {
  const [prompt, setPrompt] = useState("");
  const [variations, setVariations] = useState(2);
  const [jobId, setJobId] = useState(initialJobId);
  const [job, setJob] = useState<JobEventView | null>(null);
  const [submitting, setSubmitting] = useState(false);
  const { problem, secondsLeft, report, clear } = useProblem();

  useEffect(() => {
    if (jobId === null) return;
    const source = new EventSource(`/api/jobs/${encodeURIComponent(jobId)}/events`);
    source.addEventListener("job", (message) => {
      const view = JSON.parse(message.data) as JobEventView;
      setJob(view);
      if (view.problem) report(view.problem);
      if (TERMINAL.has(view.state)) source.close();
    });
    source.addEventListener("problem", (message) => {
      report(JSON.parse(message.data) as Problem);
      source.close();
    });
    source.addEventListener("end", () => source.close());
    return () => source.close();
    // `report` is a new function each render; the stream depends on the job only.
  }, [jobId]);

  async function generate(event: FormEvent) {
    event.preventDefault();
    setSubmitting(true);
    clear();
    try {
      const response = await submit({ prompt, variations, idempotencyKey: crypto.randomUUID() });
      const body = (await response.json()) as { jobId?: string; problem?: Problem };
      if (!response.ok || body.jobId === undefined) {
        report(body.problem);
        return;
      }
      setJob(null);
      setJobId(body.jobId);
      window.history.replaceState(null, "", `?job=${encodeURIComponent(body.jobId)}`);
    } catch {
      report({ title: "You seem to be offline", message: "Check your connection and try again." });
    } finally {
      setSubmitting(false);
    }
  }

  async function cancel() {
    if (jobId === null) return;
    const response = await fetch(`/api/jobs/${encodeURIComponent(jobId)}`, { method: "DELETE" });
    if (!response.ok) report(((await response.json()) as { problem?: Problem }).problem);
  }

  const active = job !== null && !TERMINAL.has(job.state);
  return (
    <>
      <form className="card" onSubmit={generate}>
        <label htmlFor="prompt">Prompt</label>
        <textarea
          id="prompt"
          rows={3}
          value={prompt}
          onChange={(e) => setPrompt(e.target.value)}
          placeholder="I ate the spiciest noodles on earth"
        />
        <div className="row">
          <label htmlFor="variations" style={{ margin: 0 }}>
            Images
          </label>
          <select
            id="variations"
            value={variations}
            onChange={(e) => setVariations(Number(e.target.value))}
            style={{ width: "5rem" }}
          >
            {[1, 2, 3, 4].map((n) => (
              <option key={n} value={n}>
                {n}
              </option>
            ))}
          </select>
          <button type="submit" disabled={submitting || secondsLeft > 0}>
            Generate
          </button>
          {active ? (
            <button type="button" className="secondary" onClick={cancel}>
              Cancel
            </button>
          ) : null}
        </div>
      </form>
      {problem ? <ProblemNotice problem={problem} secondsLeft={secondsLeft} /> : null}
      {jobId !== null ? (
        <section className="card" aria-label="Job" data-job-id={jobId} data-state={job?.state ?? "connecting"}>
          <progress aria-label="Progress" max={1} value={job?.fraction ?? 0} />
          <p className="stage" data-testid="stage">
            {job === null ? "Connecting…" : `${job.stage} · ${Math.round(job.fraction * 100)}%`}
          </p>
          {job && job.thumbnails.length > 0 ? (
            <div className="grid">
              {job.thumbnails.map((t) => (
                <img key={t.index} src={t.src} width={t.width} height={t.height} alt={`Thumbnail ${t.index + 1}`} />
              ))}
            </div>
          ) : null}
        </section>
      ) : null}
    </>
  );
}
