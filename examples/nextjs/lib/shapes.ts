// What the server sends the browser: plain JSON, no gateway types (the browser never loads the
// gateway client).

/** A failure, said the way a person needs it. */
export interface Problem {
  /** A short headline, e.g. "Slow down a little". */
  title: string;
  /** What happened and what to do about it. */
  message: string;
  /** When trying again makes sense, in whole seconds; absent when it does not. */
  retryAfterSeconds?: number;
}

export type JobState = "queued" | "running" | "succeeded" | "failed" | "cancelled";

/** One generated image, ready for an <img>. */
export interface ThumbnailView {
  index: number;
  src: string;
  width: number;
  height: number;
}

/** One WatchJob event as the browser sees it (the SSE `id` is its sequence). */
export interface JobEventView {
  jobId: string;
  state: JobState;
  /** 0 to 1. */
  fraction: number;
  /** What is going on, for people ("2 of 3 images ready"). */
  stage: string;
  thumbnails: ThumbnailView[];
  problem?: Problem;
}

/** A region of the heatmap, in fractions of the image's size. */
export interface RegionView {
  label: string;
  weight: number;
  x: number;
  y: number;
  width: number;
  height: number;
}

/** The heatmap of an uploaded thumbnail. */
export interface HeatmapView {
  heatmapSrc: string;
  regions: RegionView[];
}
