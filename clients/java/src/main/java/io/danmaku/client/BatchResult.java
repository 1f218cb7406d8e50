package io.danmaku.client;

import java.util.List;

/**
 * The outcome of {@code events:batch}: one result per event, in the order given.
 *
 * @param results one per event
 * @param attempts how many requests it took (events refused with a retryable error are
 *     re-sent alone)
 */
public record BatchResult(List<BatchEventResult> results, int attempts) {
    public BatchResult {
        results = List.copyOf(results);
    }

    public boolean allAccepted() {
        return results.stream().allMatch(BatchEventResult::accepted);
    }

    /** The events that were not accepted (after retries). */
    public List<BatchEventResult> failures() {
        return results.stream().filter(r -> !r.accepted()).toList();
    }
}
