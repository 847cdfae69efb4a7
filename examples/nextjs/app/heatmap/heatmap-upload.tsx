"use client";
// Upload a thumbnail and see where viewers look: the heatmap over the image, and its regions.
import { useEffect, useState, type FormEvent } from "react";
import type { HeatmapView, Problem } from "@/lib/shapes";
import { ProblemNotice, useProblem } from "../problem-notice";

export function HeatmapUpload() {
  const [file, setFile] = useState<File | null>(null);
  const [preview, setPreview] = useState<string | null>(null);
  const [heatmap, setHeatmap] = useState<HeatmapView | null>(null);
  const [working, setWorking] = useState(false);
  const { problem, secondsLeft, report, clear } = useProblem();

  useEffect(() => {
    if (file === null) return;
    const url = URL.createObjectURL(file);
    setPreview(url);
    return () => URL.revokeObjectURL(url);
  }, [file]);

  async function analyse(event: FormEvent) {
    event.preventDefault();
    if (file === null) return;
    setWorking(true);
    clear();
    setHeatmap(null);
    try {
      const form = new FormData();
      form.set("thumbnail", file);
      const response = await fetch("/api/heatmap", { method: "POST", body: form });
      const body = (await response.json()) as HeatmapView & { problem?: Problem };
      if (!response.ok) {
        report(body.problem);
        return;
      }
      setHeatmap(body);
    } catch {
      report({ title: "You seem to be offline", message: "Check your connection and try again." });
    } finally {
      setWorking(false);
    }
  }

  return (
    <>
      <form className="card" onSubmit={analyse}>
        <label htmlFor="thumbnail">Thumbnail</label>
        <input
          id="thumbnail"
          type="file"
          accept="image/png,image/jpeg,image/webp"
          onChange={(e) => setFile(e.target.files?.[0] ?? null)}
        />
        <div className="row">
          <button type="submit" disabled={file === null || working || secondsLeft > 0}>
            {working ? "Analysing…" : "Show attention"}
          </button>
        </div>
      </form>
      {problem ? <ProblemNotice problem={problem} secondsLeft={secondsLeft} /> : null}
      {preview !== null && heatmap !== null ? (
        <section className="card" aria-label="Attention heatmap">
          <div className="overlay">
            <img src={preview} alt="Your thumbnail" />
            <img className="heat" src={heatmap.heatmapSrc} alt="Attention heatmap" />
            {heatmap.regions.map((r, i) => (
              <div
                key={i}
                className="region"
                style={{
                  left: `${r.x * 100}%`,
                  top: `${r.y * 100}%`,
                  width: `${r.width * 100}%`,
                  height: `${r.height * 100}%`,
                }}
              >
                {r.label} {Math.round(r.weight * 100)}%
              </div>
            ))}
          </div>
        </section>
      ) : null}
    </>
  );
}
