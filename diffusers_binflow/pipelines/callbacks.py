"""`callback_on_step_end`, as diffusers' pipelines offer it, shared by the binary flow pipelines.

A pipeline names the tensors a callback may read and replace in `_callback_tensor_inputs`. After each step it calls
``callback_on_step_end(pipe, i, t, callback_kwargs)`` with the requested tensors and takes back those the returned
dict holds. A callback that sets ``pipe._interrupt = True`` skips the remaining steps (diffusers' convention).
"""

from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback


class StepEndCallbackMixin:
    """`interrupt`, `num_timesteps` and the checking and calling of `callback_on_step_end` for a pipeline whose
    `__call__` sets ``self._interrupt = False`` and ``self._num_timesteps`` before its loop."""

    _callback_tensor_inputs = ["latents"]

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    def check_callback_inputs(self, callback_on_step_end, callback_on_step_end_tensor_inputs) -> list[str]:
        """The names of the tensors the callback receives (a diffusers `PipelineCallback` declares its own), after
        checking that the pipeline offers each."""
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        elif callback_on_step_end is not None and not callable(callback_on_step_end):
            raise ValueError(f"`callback_on_step_end` must be callable, got {type(callback_on_step_end).__name__}.")
        unknown = set(callback_on_step_end_tensor_inputs) - set(self._callback_tensor_inputs)
        if unknown:
            raise ValueError(f"Callback tensor inputs {sorted(unknown)} are not among {self._callback_tensor_inputs}.")
        return list(callback_on_step_end_tensor_inputs)

    def run_step_end_callback(self, callback_on_step_end, i: int, t, tensor_inputs: list[str],
                              step_tensors: dict) -> dict:
        """`step_tensors` after step `i`, with those the callback returned in place of the pipeline's."""
        if callback_on_step_end is None:
            return step_tensors
        outputs = callback_on_step_end(self, i, t, {name: step_tensors[name] for name in tensor_inputs})
        if not isinstance(outputs, dict):
            raise ValueError("`callback_on_step_end` must return a dict (`callback_kwargs`, with any tensors it "
                             f"replaces), got {type(outputs).__name__}.")
        return {name: outputs.get(name, tensor) for name, tensor in step_tensors.items()}
