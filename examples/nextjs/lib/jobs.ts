// WatchJob events as the browser sees them.
import "server-only";
import { JobFailedError, JobStatus, type Job, type OutputImage } from "@viewbait/gateway-client";
import { describeProblem } from "./problems";
import type { JobEventView, JobState, ThumbnailView } from "./shapes";

const STATES: Partial<Record<JobStatus, JobState>> = {
  [JobStatus.QUEUED]: "queued",
  [JobStatus.RUNNING]: "running",
  [JobStatus.SUCCEEDED]: "succeeded",
  [JobStatus.FAILED]: "failed",
  [JobStatus.CANCELLED]: "cancelled",
};

/** An image as a data: URL, for an <img> (the emulator's and Gemini's images are small). */
export function dataUrl(image: OutputImage | undefined): string {
  const data = image?.image?.data ?? new Uint8Array();
  return `data:${image?.image?.mimeType || "image/png"};base64,${Buffer.from(data).toString("base64")}`;
}

function thumbnails(job: Job): ThumbnailView[] {
  if (job.result.case !== "generateThumbnail") return [];
  return job.result.value.thumbnails
    .map((t) => ({ index: t.index, src: dataUrl(t.image), width: t.image?.width ?? 0, height: t.image?.height ?? 0 }))
    .sort((a, b) => a.index - b.index);
}

/** What each state says when the gateway's progress has nothing better. */
const STAGE_WORDS: Record<JobState, string> = {
  queued: "Waiting for a free worker",
  running: "Starting",
  succeeded: "Done",
  failed: "Failed",
  cancelled: "Cancelled",
};

function stage(state: JobState, job: Job): string {
  return state === "running" && job.progress?.message ? job.progress.message : STAGE_WORDS[state];
}

/** The browser's view of a job. */
export function jobView(job: Job): JobEventView {
  const state = STATES[job.status] ?? "queued";
  const view: JobEventView = {
    jobId: job.id,
    state,
    fraction: state === "succeeded" ? 1 : (job.progress?.fraction ?? 0),
    stage: stage(state, job),
    thumbnails: thumbnails(job),
  };
  if (state === "failed") view.problem = describeProblem(new JobFailedError(job));
  return view;
}
