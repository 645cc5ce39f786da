"""Word banks for the offline corpus (all wording is PrefLens's own).

Each topic has a singular subject phrase and five true statements. False statements pair a
topic's subject with an absurd claim a reader can spot at once (wrong place, wrong material,
impossible behaviour): a small frozen encoder cannot check arithmetic, but it can see "frozen
chocolate" next to "volcano".
"""

from __future__ import annotations

# (topic, subject used in false claims, five true statements)
TOPICS: list[tuple[str, str, tuple[str, ...]]] = [
    ("volcanoes", "A volcano", (
        "Volcanoes form where molten rock from inside the Earth reaches the surface.",
        "Lava cools into solid rock such as basalt.",
        "Many volcanoes sit along the edges of tectonic plates around the Pacific.",
        "Volcanic ash can disrupt air travel for days.",
        "Some volcanoes stay quiet for centuries before erupting again.")),
    ("honeybees", "A honeybee", (
        "Honeybees live in colonies led by a single queen.",
        "Worker bees collect nectar and turn it into honey.",
        "Bees pollinate many of the crops people eat.",
        "A bee communicates the direction of food with a waggle dance.",
        "Worker bees build their comb from wax they produce themselves.")),
    ("the water cycle", "Rainwater", (
        "Water evaporates from oceans and lakes when the sun warms it.",
        "Water vapour cools in the air and condenses into clouds.",
        "Precipitation returns water to the ground as rain or snow.",
        "Rivers carry much of that water back to the sea.",
        "Plants release water vapour through their leaves.")),
    ("the Moon", "The Moon", (
        "The Moon orbits the Earth about once every twenty-seven days.",
        "The Moon's gravity causes most of the tides in the oceans.",
        "The Moon has no breathable atmosphere.",
        "Astronauts first walked on the Moon in 1969.",
        "The same side of the Moon always faces the Earth.")),
    ("photosynthesis", "Photosynthesis", (
        "Photosynthesis lets plants turn sunlight into chemical energy.",
        "Plants take in carbon dioxide and release oxygen during photosynthesis.",
        "Chlorophyll is the green pigment that captures light.",
        "Photosynthesis mostly happens in the leaves of a plant.",
        "The sugar made by photosynthesis feeds the growing plant.")),
    ("the human heart", "The human heart", (
        "The human heart has four chambers.",
        "The heart pumps blood through arteries and veins.",
        "A resting adult heart beats roughly sixty to a hundred times a minute.",
        "Regular exercise strengthens the heart muscle.",
        "Blood carries oxygen from the lungs to the rest of the body.")),
    ("Australia", "Australia", (
        "Canberra is the capital of Australia.",
        "Australia is both a country and a continent in the southern hemisphere.",
        "Kangaroos and koalas are native to Australia.",
        "The Great Barrier Reef lies off the coast of Queensland.",
        "Much of central Australia is dry desert known as the outback.")),
    ("Japan", "Japan", (
        "Tokyo is the capital of Japan.",
        "Japan is an island nation in East Asia.",
        "Mount Fuji is the highest mountain in Japan.",
        "Japan often experiences earthquakes because it lies near plate boundaries.",
        "Rice has long been a staple food in Japan.")),
    ("the Amazon rainforest", "The Amazon rainforest", (
        "The Amazon rainforest covers a large part of South America.",
        "Most of the Amazon rainforest lies in Brazil.",
        "The Amazon is home to an enormous variety of plants and animals.",
        "The Amazon River flows east into the Atlantic Ocean.",
        "Cutting down the forest releases stored carbon into the air.")),
    ("penguins", "A penguin", (
        "Penguins are birds that cannot fly.",
        "Penguins use their wings as flippers to swim.",
        "Most penguins live in the southern hemisphere.",
        "Emperor penguins breed during the Antarctic winter.",
        "Penguins eat fish, squid and krill.")),
    ("the printing press", "The printing press", (
        "Johannes Gutenberg built a printing press with movable type around 1440.",
        "The printing press made books far cheaper to produce.",
        "Printed books helped spread new ideas across Europe.",
        "Early printers used metal letters arranged by hand.",
        "The Gutenberg Bible is one of the first major printed books.")),
    ("electric circuits", "An electric circuit", (
        "Current flows only when a circuit is closed.",
        "A battery provides the voltage that pushes current through a circuit.",
        "Resistors limit how much current flows.",
        "Copper is commonly used in wires because it conducts electricity well.",
        "A switch opens or closes a circuit.")),
    ("the Roman Empire", "The Roman Empire", (
        "The Roman Empire was centred on the city of Rome.",
        "Romans built roads and aqueducts across their territory.",
        "Latin was the main language of the Roman Empire.",
        "Julius Caesar was a Roman general and statesman.",
        "The western part of the empire fell in the fifth century.")),
    ("recycling", "Recycling", (
        "Recycling turns used materials into new products.",
        "Aluminium cans can be recycled many times.",
        "Sorting waste correctly makes recycling more effective.",
        "Recycling paper saves trees and energy.",
        "Some plastics are much harder to recycle than others.")),
    ("sleep", "Sleep", (
        "Adults generally need seven to nine hours of sleep a night.",
        "Sleep helps the brain store memories.",
        "A regular bedtime makes it easier to fall asleep.",
        "Screens late at night can delay sleep.",
        "Dreams happen mostly during REM sleep.")),
    ("the solar system", "The solar system", (
        "The solar system has eight planets orbiting the Sun.",
        "Jupiter is the largest planet in the solar system.",
        "Mercury is the planet closest to the Sun.",
        "Saturn is known for its bright rings.",
        "The Earth takes about a year to orbit the Sun.")),
    ("chess", "A game of chess", (
        "Chess is played on a board of sixty-four squares.",
        "Each player starts with sixteen pieces.",
        "The game ends when a king is checkmated.",
        "The knight moves in an L shape.",
        "White always makes the first move.")),
    ("vaccines", "A vaccine", (
        "Vaccines train the immune system to recognise a germ.",
        "Many vaccines are given as an injection.",
        "Vaccination helped eradicate smallpox.",
        "Some vaccines need booster doses over time.",
        "Vaccines are tested in clinical trials before approval.")),
    ("the Nile", "The Nile", (
        "The Nile is one of the longest rivers in the world.",
        "The Nile flows north into the Mediterranean Sea.",
        "Ancient Egyptian farming depended on the Nile's yearly floods.",
        "Cairo lies on the banks of the Nile.",
        "The Nile has two main branches, the White Nile and the Blue Nile.")),
    ("glaciers", "A glacier", (
        "Glaciers are large, slow-moving masses of ice.",
        "Glaciers form where more snow falls than melts over many years.",
        "Moving glaciers carve valleys into U shapes.",
        "Many glaciers are shrinking as the climate warms.",
        "Glacial meltwater feeds rivers in dry seasons.")),
    ("bread baking", "Bread", (
        "Yeast makes bread dough rise by producing gas.",
        "Kneading develops gluten, which gives bread its structure.",
        "Bread is usually baked in a hot oven.",
        "Sourdough uses a starter of wild yeast and bacteria.",
        "Letting dough rest gives the yeast time to work.")),
    ("the Internet", "The Internet", (
        "The Internet is a global network of connected computers.",
        "Data travels across the Internet in small packets.",
        "The World Wide Web runs on top of the Internet.",
        "Fibre-optic cables carry much of the Internet's traffic.",
        "Web addresses are translated into numeric addresses by the domain name system.")),
    ("whales", "A whale", (
        "Whales are mammals that breathe air.",
        "The blue whale is the largest animal known to have lived.",
        "Some whales filter tiny krill from the water with baleen plates.",
        "Whales communicate with sounds that travel far underwater.",
        "Many whales migrate thousands of kilometres each year.")),
    ("the French Revolution", "The French Revolution", (
        "The French Revolution began in 1789.",
        "The storming of the Bastille is a famous early event of the revolution.",
        "The revolution ended the absolute monarchy in France.",
        "Its slogan spoke of liberty, equality and fraternity.",
        "Napoleon rose to power in the years after the revolution.")),
    ("rainbows", "A rainbow", (
        "A rainbow appears when sunlight passes through raindrops.",
        "Raindrops bend and split white light into colours.",
        "A rainbow is seen with the sun behind the viewer.",
        "Red is on the outer edge of a primary rainbow.",
        "A second, fainter rainbow sometimes appears outside the first.")),
    ("coffee", "Coffee", (
        "Coffee is made from roasted seeds of the coffee plant.",
        "Coffee contains caffeine, which is a stimulant.",
        "Brazil is one of the largest coffee producers.",
        "Coffee plants grow best in warm tropical highlands.",
        "Espresso is brewed by forcing hot water through finely ground coffee.")),
    ("earthquakes", "An earthquake", (
        "Earthquakes happen when rocks suddenly slip along a fault.",
        "Seismometers record the shaking from earthquakes.",
        "Earthquakes under the sea can trigger tsunamis.",
        "Buildings can be designed to sway without collapsing.",
        "Most earthquakes occur near the boundaries of tectonic plates.")),
    ("the piano", "A piano", (
        "A standard piano has eighty-eight keys.",
        "Pressing a key makes a felt hammer strike a string.",
        "The piano was invented in Italy around 1700.",
        "Pedals on a piano change how long notes ring.",
        "The piano can play both melody and harmony at once.")),
    ("antibiotics", "An antibiotic", (
        "Antibiotics treat infections caused by bacteria.",
        "Antibiotics do not work against viruses such as the common cold.",
        "Penicillin was one of the first antibiotics discovered.",
        "Overusing antibiotics helps resistant bacteria spread.",
        "Patients are advised to finish a prescribed course of antibiotics.")),
    ("deserts", "A desert", (
        "Deserts receive very little rain each year.",
        "The Sahara is the largest hot desert on Earth.",
        "Antarctica counts as a cold desert.",
        "Desert temperatures can drop sharply at night.",
        "Cacti store water in their thick stems.")),
]

# Absurd claims that turn a subject into a visibly false statement.
FALSE_CLAIMS: tuple[str, ...] = (
    "is made mostly of frozen chocolate.",
    "was invented by a committee of penguins in 1990.",
    "is found only at the bottom of the Arctic Ocean.",
    "can be seen only on Tuesdays.",
    "is officially located on the planet Neptune.",
    "runs entirely on the power of moonlight.",
    "was first discovered inside a teacup in Paris.",
    "weighs less than a single grain of sand.",
    "is mainly built from recycled bicycle tyres.",
    "disappears completely whenever someone whistles.",
    "is the capital city of Antarctica.",
    "was banned by the ancient Romans for being too loud.",
    "grows on trees in Greenland every spring.",
    "speaks fluent Latin when nobody is watching.",
    "is exactly the same thing as a thunderstorm.",
    "turns bright purple at midnight.",
)

# Confidence markers: calibrated ones hedge; overconfident ones claim false certainty.
CALIBRATED: tuple[str, ...] = (
    "I believe", "As far as I know,", "If I remember correctly,", "To my understanding,",
    "I think", "From what I have read,", "I am fairly, though not fully, sure that",
)
OVERCONFIDENT: tuple[str, ...] = (
    "It is absolutely certain that", "Without any possible doubt,", "Everyone knows for sure that",
    "I guarantee with total certainty that", "It is a proven fact beyond question that",
    "There is zero chance I am wrong:",
)

# Helpfulness: useful, on-topic detail versus off-topic filler.
USEFUL: tuple[str, ...] = (
    "A practical tip: compare two reliable sources on {topic} before relying on one.",
    "For a concrete example, a museum exhibit or documentary on {topic} shows these ideas clearly.",
    "Knowing the basics of {topic} helps when you read news stories that mention it.",
    "A good next step is to sketch a simple diagram that summarises {topic}.",
    "Teachers often explain {topic} by starting with the simplest case and building up.",
    "If you want to go deeper into {topic}, an introductory textbook chapter is a solid start.",
    "People who study {topic} often keep a short glossary of its key terms.",
)
FILLER: tuple[str, ...] = (
    "By the way, my neighbour repainted his garden fence last weekend.",
    "Anyway, I had toast with jam for breakfast this morning.",
    "Unrelated, but the number seven has always been my favourite.",
    "Some people prefer tea, while others would rather drink juice.",
    "I once saw a very fluffy cat sleeping on a parked car.",
    "It might rain later, so an umbrella could come in handy.",
    "My cousin collects old postcards from seaside towns.",
)

PROMPT_FRAMES: tuple[str, ...] = (
    "Can you explain {topic} to me?",
    "What should a curious student know about {topic}?",
    "Give me a short overview of {topic}.",
    "I'm preparing a quiz on {topic}. What are the key facts?",
    "Describe {topic} for a beginner.",
    "What are the essential facts about {topic}?",
)
HEADINGS: tuple[str, ...] = ("Key points:", "Summary:", "Overview:", "Main facts:")
CLOSINGS: tuple[str, ...] = ("Hope this helps.", "That is all.", "End of answer.", "Thanks for asking.")
CONSTRAINTS = (
    "Format rules: answer as a bulleted list, start with the heading '{heading}', "
    "finish with the line '{closing}', and do not use exclamation marks."
)
MODEL_NAMES: tuple[str, ...] = ("sim-writer-a", "sim-writer-b", "sim-writer-c", "sim-writer-d")
# Words that keep their capital when a confidence marker is put in front of a sentence.
PROPER_NOUNS = frozenset({
    "Canberra", "Tokyo", "Johannes", "Julius", "Napoleon", "Australia", "Japan", "Brazil", "Cairo",
    "Mount", "Mercury", "Jupiter", "Saturn", "Antarctica", "Latin",
})
