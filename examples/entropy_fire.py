"""The plugin example of the design document, run on the bundled SmolLM2 (``python examples/entropy_fire.py``)."""

from openmav.mav import MAV
from openmav.view.panels.panel_base import PanelBase


class EntropyFire(PanelBase):
    def __init__(self, measurements):
        super().__init__("Entropy Fire", "red")
        self.measurements = measurements

    def get_panel_content(self):
        return "🔥 " * int(self.measurements.attention_entropy_values[0])


MAV("smollm2-135m", "hello world", selected_panels=["generated_text", "EntropyFire"], external_panels=[EntropyFire])
