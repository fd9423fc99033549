"""Build the built-in retrieval collection: src/twofiles/rag/collection/{articles/*.md,
questions.jsonl, PROVENANCE.md}.

Short encyclopedia articles about invented towns, inventions, people and species: made-up names,
dates and numbers, so a model cannot answer from memory and only retrieval finds the facts. Each
article gets questions of two kinds:

- "named": the question names the article's subject and asks for one fact in other words than
  the article's ("When did settlers first put down roots in X?" for "X was founded in 1632");
- "described": the question paraphrases what the subject is known for and asks for its name,
  sharing as few words as possible with the article. Keyword overlap alone does not solve these;
- "keyed": the question gives an exact key from the article (a population, a production count,
  a book title, a scientific name) and asks for the subject's name: exact tokens decide these,
  which is where keyword search is strong and embeddings of numbers and coined words are weak.

The three kinds pull the retrievers in different directions, which makes BM25 against dense
against hybrid a real comparison.

Every answer is checked to appear verbatim (case-insensitively) in exactly one article and not
in its question; questions failing the check are dropped. The dev/test split is not written here:
twofiles.rag.collection computes it at load time from each article's name, so regenerating keeps
it. The output is deterministic:

    python scripts/build_rag_collection.py            # seed 2026, writes the files in place
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "twofiles" / "rag" / "collection"
SEED = 2026
PER_KIND = 30

# (what the article says, how a described question says it): the second avoids the first's words
TOWN_FEATURES = [
    (
        "its midnight lantern regatta, when fishing crews race illuminated boats across the harbour",
        "a nighttime contest in which glowing vessels speed over the port waters",
    ),
    (
        "the copper bells hung beneath every bridge, which ring whenever the wind turns north",
        "chimes made of reddish metal under its crossings that sound when breezes shift direction",
    ),
    (
        "a cheese aged for seven years inside abandoned salt mines",
        "dairy produce left to mature underground in old mineral tunnels",
    ),
    (
        "its library carved directly into a limestone cliff",
        "a book collection housed in rock hollowed out of a chalky escarpment",
    ),
    (
        "the annual migration of white storks that nest on its chimney pots",
        "large wading birds returning each year to breed on rooftop flues",
    ),
    (
        "a clock tower whose hands run backwards to honour a founding legend",
        "a timepiece on a spire that turns anticlockwise because of an old origin story",
    ),
    (
        "glassblowers who make marbles from the black volcanic sand of its beaches",
        "artisans shaping small toy spheres out of dark shore grit from old eruptions",
    ),
    (
        "the rope bridge, four hundred metres long, that links its two halves over a gorge",
        "a very long suspended walkway of cords joining both parts of the settlement across a ravine",
    ),
    (
        "its floating market, held on moored barges every Thursday",
        "weekly trading from tethered river boats",
    ),
    (
        "the hot springs beneath its square, which keep the cobbles free of snow all winter",
        "warm underground water that stops frost and drifts settling on the central plaza",
    ),
    (
        "a tradition of painting every front door a different shade of blue",
        "households colouring their entrances in varied hues of azure",
    ),
    (
        "the oldest surviving printing press in the region, still used to print the town newspaper",
        "an ancient machine for making newspapers that still produces the local daily",
    ),
    (
        "orchards of dwarf pear trees grown inside walled courtyards",
        "miniature fruit groves sheltered within enclosed yards",
    ),
    (
        "a spring festival where residents throw flour at one another in the streets",
        "a seasonal celebration in which locals pelt each other with milled grain",
    ),
    (
        "its windmills, forty-one of which still grind grain",
        "dozens of wind-powered mills that continue to turn wheat into meal",
    ),
    (
        "the tunnels its smugglers dug beneath the harbour in the age of sail",
        "secret underground passages made by contraband traders below the docks",
    ),
    (
        "a choir of lighthouse keepers that has sung every Sunday since its founding",
        "a singing group of coastal beacon wardens performing weekly",
    ),
    (
        "carpets woven from the wool of mountain goats and dyed with lichen",
        "rugs of highland animal fibre coloured with moss-like growths",
    ),
    (
        "the giant sundial laid out in stones across its central meadow",
        "an enormous shadow clock built from rocks on a grassy common",
    ),
    (
        "its salt marshes, where flamingos feed in late summer",
        "briny wetlands visited by pink birds at the end of the warm season",
    ),
    (
        "a violin workshop tradition reaching back eleven generations",
        "makers of stringed instruments handing down the craft over many lifetimes",
    ),
    (
        "the terraced vineyards cut into the slopes of an extinct volcano",
        "stepped grape fields on the sides of a long-dormant fire mountain",
    ),
    (
        "its ice-fishing huts, which form a temporary village on the frozen lake every January",
        "winter shelters on a solid lake that make a seasonal hamlet for anglers",
    ),
    (
        "the paper umbrellas its craftsmen oil with linseed to make them waterproof",
        "rain shades of treated paper sealed with flax oil",
    ),
    (
        "a museum devoted entirely to keys and locks",
        "a gallery dedicated to the history of fastenings and what opens them",
    ),
    (
        "its chess tournament played with living pieces in costume",
        "a board game contest where people dressed up act as the figures",
    ),
    (
        "the bees kept on the roof of every public building",
        "honey insects raised on top of civic halls",
    ),
    (
        "an observatory whose telescope was ground from a single block of rock crystal",
        "a stargazing station with a lens shaped out of one piece of quartz",
    ),
    (
        "the lavender fields that turn its hills purple each July",
        "fragrant violet blooms colouring the slopes in midsummer",
    ),
    (
        "its horse-drawn trams, which still carry passengers along the seafront",
        "carriages on rails pulled by animals, taking riders along the shore",
    ),
    (
        "a bakery guild that bakes a loaf large enough to feed the whole town at midwinter",
        "a society of bread makers producing one enormous bake to share with every resident during the darkest season",
    ),
    (
        "the tide pools where children race hermit crabs each August",
        "rocky seaside puddles where youngsters hold shelled-creature contests in late summer",
    ),
]
INVENTION_FEATURES = [
    (
        "a hand-cranked device that sorted seeds by weight using a series of tilted brass trays",
        "a machine worked by turning a handle that separated grains according to how heavy they were",
    ),
    (
        "a lamp that burned fish oil and reflected its flame through a ring of polished mirrors",
        "a light fuelled by marine fat that bounced its glow off shiny reflecting glass",
    ),
    (
        "a loom that read its patterns from strips of punched birch bark",
        "a weaving frame that followed designs encoded as holes in tree-skin strips",
    ),
    (
        "a pump driven by the rise and fall of the tide",
        "a water lifter powered by the sea going in and out",
    ),
    (
        "a clock that kept time by the steady drip of mercury",
        "a timekeeper regulated by drops of quicksilver",
    ),
    (
        "a diving bell fed with fresh air through leather hoses from the surface",
        "an underwater chamber supplied with breath through hide tubes from above",
    ),
    (
        "a plough with a rotating blade that cut through roots without a team of oxen",
        "a tilling tool with a spinning edge slicing plant fibres so no draught animals were needed",
    ),
    (
        "a stove that heated a whole house through clay pipes hidden in the walls",
        "a heater warming every room via earthenware ducts concealed in the masonry",
    ),
    (
        "a telescope that folded into a walking cane",
        "a spyglass that collapsed into a stick for strolling",
    ),
    (
        "a printing press small enough to fit in a saddlebag",
        "a portable machine for making printed sheets that a rider could carry",
    ),
    ("a bicycle with wheels of woven bamboo", "a pedal cycle whose rims were made of plaited cane"),
    (
        "a refrigerator cooled by evaporating water from porous clay jars",
        "a cold box chilled as moisture escaped from unglazed pottery",
    ),
    (
        "a mechanical calculator that added sums with a row of toothed wheels",
        "an arithmetic machine that totalled numbers using geared discs",
    ),
    (
        "a signal tower that passed messages between hills with coloured shutters",
        "a relay station sending news from summit to summit using painted panels that opened and closed",
    ),
    (
        "an alarm that rang when grain in a silo grew too warm",
        "a warning bell triggered by overheating in stored crops",
    ),
    (
        "a kite that lifted a fisherman's net far out over the waves",
        "a wind-borne flyer that carried angling mesh out above the sea",
    ),
    (
        "a camera that recorded images on sheets of silvered copper",
        "an apparatus capturing pictures on metal plates coated with a precious white metal",
    ),
    (
        "a windmill whose sails turned to face the wind by themselves",
        "a wind-driven mill that steered its own vanes into the breeze automatically",
    ),
    (
        "a hearing horn shaped like a seashell",
        "an ear trumpet modelled on the spiral of a mollusc's home",
    ),
    (
        "a boat that moved by paddles turned by a dog on a treadmill",
        "a vessel propelled by wheels powered by a hound walking on a belt",
    ),
    (
        "a harp whose strings were plucked by the wind",
        "a stringed instrument played by moving air instead of fingers",
    ),
    (
        "a bread oven that turned its loaves on a rotating stone shelf",
        "a baking chamber with a revolving slab that spun the dough while it cooked",
    ),
    (
        "a lock that opened only to a tune whistled into it",
        "a fastening that released when someone sang a particular melody through pursed lips",
    ),
    (
        "a sledge with runners of whalebone that could cross thin ice",
        "a sled gliding on cetacean-rib skis safely over fragile frozen water",
    ),
    (
        "a fan driven by a falling weight, like a grandfather clock",
        "a cooling blower powered by a descending mass in the manner of a pendulum timepiece",
    ),
    (
        "a compass that pointed to the nearest fresh water",
        "a direction finder that led travellers towards drinkable springs",
    ),
    (
        "a chair that rocked a baby to sleep with a spring mechanism",
        "a seat that soothed infants into slumber by swaying on coiled metal",
    ),
    (
        "an umbrella that collected rain into a flask in its handle",
        "a rain shield that stored the downpour in a bottle inside its grip",
    ),
    (
        "a tile that glowed faintly at night after a day in the sun",
        "a floor piece that gave off soft light in darkness once it had soaked up daylight",
    ),
    (
        "a music box that played a different tune for every day of the year",
        "a melody machine with a fresh song for each of the 365 days",
    ),
    (
        "a scale that weighed letters and printed the postage due",
        "a balance that measured mail and stamped the cost of sending it",
    ),
    (
        "a ladder that folded into a wooden suitcase",
        "climbing steps that packed away inside a timber travel case",
    ),
]
PERSON_FEATURES = [
    (
        "charting the drift of ice floes along the northern coast over eleven winters",
        "mapping how sea ice moved near the polar shore across many cold seasons",
    ),
    (
        "teaching deaf children to read with carved wooden letters",
        "helping youngsters who could not hear learn literacy using alphabet blocks",
    ),
    (
        "collecting more than four thousand folk songs from mountain villages",
        "gathering thousands of traditional ballads in highland hamlets",
    ),
    (
        "designing the first public bathhouses heated by geothermal water",
        "planning communal washing halls warmed by the earth's own heat",
    ),
    (
        "crossing the salt desert on foot with only two camels",
        "walking over the briny wasteland accompanied by a pair of humped animals",
    ),
    (
        "breeding a wheat that survived frost in early spring",
        "developing a cereal crop able to endure freezing nights at the start of the growing season",
    ),
    (
        "founding the first lending library for sailors",
        "starting a book-borrowing service for seamen",
    ),
    (
        "painting portraits of every lighthouse keeper on the western coast",
        "making likenesses of all the beacon wardens along the sunset shore",
    ),
    (
        "measuring the height of the great waterfall with a kite and a string",
        "working out how tall the huge cascade was using a flying toy and a line",
    ),
    (
        "writing the first dictionary of the marsh dialect",
        "compiling the earliest wordbook for the wetland people's speech",
    ),
    (
        "building a glider from silk and willow that flew across the valley",
        "constructing an unpowered aircraft of fine fabric and bendy branches that crossed the dale",
    ),
    (
        "running a hospital in a converted grain barge",
        "operating a place for healing the sick inside an old cargo boat",
    ),
    (
        "discovering the comet that now bears the family name",
        "spotting a tailed celestial visitor later called after the household",
    ),
    (
        "leading the strike of the dockworkers that won the eight-hour day",
        "heading the harbour labourers' walkout that secured shorter shifts",
    ),
    (
        "composing a symphony for church bells and foghorns",
        "writing orchestral music for steeple chimes and maritime warning sirens",
    ),
    (
        "mapping the caves beneath the eastern plateau by candlelight",
        "surveying the underground caverns below the high tableland with only flames to see by",
    ),
    (
        "inventing a shorthand used by court reporters for a century",
        "creating a rapid writing system that legal stenographers relied on for a hundred years",
    ),
    (
        "restoring the burned cathedral's stained glass from fragments",
        "rebuilding the scorched church's coloured windows out of broken shards",
    ),
    (
        "training carrier pigeons to deliver medicine to island villages",
        "teaching homing birds to fly remedies to communities on isles",
    ),
    (
        "photographing the same oak tree every day for forty years",
        "taking a picture of one particular tree daily over four decades",
    ),
    (
        "swimming across the strait in winter to carry a message",
        "crossing the narrow sea channel by swimming in the cold season to deliver news",
    ),
    (
        "founding a school where lessons were held outdoors in every season",
        "setting up a teaching institution whose classes always took place in the open air",
    ),
    (
        "recording the songs of whales with an underwater horn",
        "capturing the calls of great sea mammals using a submerged trumpet",
    ),
    (
        "designing bridges that could be taken apart and carried by mule",
        "engineering crossings that could be dismantled and transported on pack animals",
    ),
    (
        "cataloguing the mosses of the southern forests",
        "listing and describing the tiny green plants of the woodlands to the south",
    ),
    ("running the first postal service by ski", "operating an early mail delivery on snow runners"),
    (
        "sculpting statues out of river ice each winter",
        "carving figures from frozen stream water in the coldest months",
    ),
    (
        "translating the old sea charts of the merchant guild",
        "rendering the trading league's ancient nautical maps into another language",
    ),
    (
        "keeping a weather diary without a missing day for fifty-two years",
        "logging the climate daily for over half a century with no gaps",
    ),
    (
        "building a clock that ran for a century without winding",
        "making a timepiece that went on for a hundred years without being wound",
    ),
    (
        "cooking for the expedition that first crossed the glacier",
        "preparing meals for the party that made the earliest traverse of the ice sheet",
    ),
    (
        "teaching an entire village to swim after the great flood",
        "giving a whole hamlet water lessons following the terrible deluge",
    ),
]
SPECIES_FEATURES = [
    (
        "It feeds almost entirely on the nectar of night-blooming cacti",
        "survives mostly on the sweet liquid of desert plants whose flowers open after dark",
    ),
    (
        "Its shell changes colour with the temperature of the water",
        "has a hard casing whose hue shifts as the sea warms or cools",
    ),
    (
        "It builds nests of woven grass that hang from the tips of reeds",
        "makes plaited homes suspended from the ends of marsh stems",
    ),
    (
        "It can survive for months buried in dried mud until the rains return",
        "lies dormant in baked earth for a long time waiting for wet weather",
    ),
    (
        "Its song carries more than three kilometres across open water",
        "has a call that can be heard several miles away over a lake",
    ),
    (
        "It carries its young on its back for the first two weeks of life",
        "transports its offspring piggyback during their first fortnight",
    ),
    (
        "It glows a faint green when disturbed at night",
        "emits a pale emerald light if startled in darkness",
    ),
    (
        "It walks along the bottom of streams using its stiff fins as legs",
        "strolls over riverbeds propped up on rigid flippers",
    ),
    (
        "It stores acorns in the bark of a single tree for the whole winter",
        "hides nuts from oaks in one trunk to last the cold months",
    ),
    (
        "It migrates each autumn from the high meadows to the coast",
        "travels every fall from mountain pastures down to the seaside",
    ),
    (
        "It spins silk strong enough to catch small birds",
        "produces threads tough enough to trap little fliers",
    ),
    (
        "It hunts by stirring up sand with its tail and snapping at what flees",
        "catches prey by churning the seabed with its rear end and biting whatever escapes",
    ),
    (
        "It sleeps hanging upside down from cave ceilings in groups of hundreds",
        "rests inverted from the roofs of caverns in huge clusters",
    ),
    (
        "It mimics the sound of running water to attract mates",
        "imitates a babbling brook to win a partner",
    ),
    (
        "It grows a thick white coat in winter and sheds it in spring",
        "develops pale fur for the cold season and loses it when the weather warms",
    ),
    (
        "It lays its eggs inside empty snail shells",
        "deposits its clutch in abandoned mollusc casings",
    ),
    (
        "It drinks by collecting fog on the ridges of its back",
        "gets water by catching mist on the grooves along its spine",
    ),
    (
        "It can glide for fifty metres between trees on folds of skin",
        "sails long distances from trunk to trunk using flaps along its body",
    ),
    (
        "It lives only in the spray zone of waterfalls",
        "is found exclusively where cascades throw up mist",
    ),
    (
        "It farms a fungus on chewed leaves inside its burrow",
        "cultivates a mould on masticated foliage in its underground den",
    ),
    ("It changes sex as it grows older", "switches from male to female with age"),
    (
        "It drums on hollow logs to mark its territory",
        "beats on empty tree trunks to claim its patch of forest",
    ),
    (
        "It sheds its tail to escape predators and grows a new one within a month",
        "drops its rear appendage when attacked and regrows it in weeks",
    ),
    (
        "It follows herds of wild horses to eat the insects they disturb",
        "trails behind galloping feral ponies to snap up the bugs they kick up",
    ),
    (
        "It builds dams of pebbles across shallow streams",
        "piles small stones in brooks to hold back the flow",
    ),
    (
        "It hibernates in the abandoned burrows of badgers",
        "spends the cold months asleep in empty setts dug by striped diggers",
    ),
    (
        "It can see ultraviolet patterns on flower petals",
        "perceives light beyond violet in the markings of blossoms",
    ),
    (
        "It sings in duets, the male and female alternating notes",
        "performs songs in pairs where mates take turns with each sound",
    ),
    (
        "It swallows small stones to help it dive deeper",
        "gulps pebbles as ballast to reach greater depths underwater",
    ),
    (
        "It raises its chicks in colonies on floating mats of weed",
        "rears its young in groups on drifting rafts of aquatic vegetation",
    ),
    (
        "It produces a milk-like secretion to feed its young",
        "makes a creamy fluid to nourish its babies",
    ),
    (
        "It uses thorns as tools to pry insects from bark",
        "wields spines to winkle bugs out of tree skin",
    ),
]

ONSETS = [
    "b",
    "br",
    "c",
    "d",
    "dr",
    "f",
    "g",
    "gr",
    "h",
    "k",
    "l",
    "m",
    "n",
    "p",
    "qu",
    "r",
    "s",
    "st",
    "t",
    "tr",
    "v",
    "w",
    "z",
    "th",
    "sk",
]
VOWELS = ["a", "e", "i", "o", "u", "ae", "ia", "ou", "y"]
CODAS = ["", "", "n", "r", "l", "s", "th", "m", "nd", "rk", "sk", "v"]
TOWN_ENDS = [
    "holm",
    "mere",
    "wick",
    "ford",
    "stad",
    "by",
    "haven",
    "gate",
    "dale",
    "minster",
    "burg",
    "ton",
]
REGIONS = [
    "the Oskari Valley",
    "the Tamber Coast",
    "the Velling Highlands",
    "the Marrow Fens",
    "the Isles of Quen",
    "the Sallow Plains",
    "the Durne Lowlands",
    "the Kestrel Hills",
    "the Brannock March",
    "the Saltreach Delta",
]
JOBS = [
    "cartographer",
    "shipwright",
    "miller",
    "herbalist",
    "stonemason",
    "merchant",
    "monk",
    "weaver",
    "surveyor",
    "ferryman",
]
REASONS = [
    "was looking for a sheltered anchorage",
    "followed a river in search of good clay",
    "fled a long drought in the south",
    "was granted the land by a grateful duke",
    "came to trade furs with the hill clans",
    "built a mill at the river bend and stayed",
]
INDUSTRIES = [
    "fishing and boatbuilding",
    "wool and cloth",
    "timber and charcoal",
    "pottery",
    "salt",
    "copper mining",
    "barley and brewing",
    "ropemaking",
    "tanning",
    "cider",
]
LANDMARK_KINDS = ["the Chapel of", "the Hall of", "the Tower of", "the Bridge of", "the Granary of"]
# what each invention above is called after its coined name, in the same order
INVENTION_NOUNS = [
    "sorter",
    "lamp",
    "loom",
    "pump",
    "clock",
    "bell",
    "plough",
    "stove",
    "telescope",
    "press",
    "bicycle",
    "cooler",
    "calculator",
    "signal",
    "alarm",
    "kite",
    "camera",
    "windmill",
    "horn",
    "paddleboat",
    "harp",
    "oven",
    "lock",
    "sledge",
    "fan",
    "compass",
    "rocker",
    "umbrella",
    "tile",
    "music box",
    "scale",
    "ladder",
]
PROFESSIONS = [
    "explorer",
    "teacher",
    "folklorist",
    "architect",
    "botanist",
    "physician",
    "astronomer",
    "engineer",
    "painter",
    "linguist",
    "naturalist",
    "composer",
    "cook",
    "photographer",
]
# class -> adult length range in centimetres
CLASSES = {
    "bird": (9, 70),
    "freshwater fish": (4, 60),
    "beetle": (1, 6),
    "lizard": (6, 45),
    "frog": (2, 14),
    "bat": (4, 18),
    "moth": (2, 9),
    "crab": (3, 25),
    "small mammal": (8, 40),
    "snail": (1, 8),
}
HABITATS = [
    "the reed beds of the Marrow Fens",
    "the cloud forests of the Velling Highlands",
    "the dunes of the Tamber Coast",
    "the cold streams of the Kestrel Hills",
    "the mangroves of the Saltreach Delta",
    "the limestone caves of the Brannock March",
    "the meadows of the Sallow Plains",
]
STATUS = [
    "is listed as common",
    "is considered vulnerable because its habitat is shrinking",
    "has recovered since hunting it was banned",
    "is rarely seen and poorly studied",
    "is protected in two nature reserves",
]


class Names:
    """Unique invented words: no name equals, contains or is contained in another."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: list[str] = []

    def word(self, syllables: int, end: str = "") -> str:
        while True:
            w = (
                "".join(
                    self.rng.choice(ONSETS)
                    + self.rng.choice(VOWELS)
                    + (self.rng.choice(CODAS) if i == syllables - 1 else "")
                    for i in range(syllables)
                )
                + end
            )
            w = w.capitalize()
            lw = w.lower()
            if 4 <= len(w) <= 13 and not any(lw in u or u in lw for u in self.used):
                self.used.append(lw)
                return w

    def person(self) -> str:
        return f"{self.word(2)} {self.word(2, self.rng.choice(['', 'son', 'ard', 'ett', 'ow']))}"


class Numbers:
    """Years and quantities drawn without replacement, so each answer is one article's."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.years = list(range(1120, 1990))
        rng.shuffle(self.years)
        self.taken: set[str] = set()

    def year(self, lo: int = 1120, hi: int = 1989) -> int:
        for i, y in enumerate(self.years):
            if lo <= y <= hi:
                return self.years.pop(i)
        raise RuntimeError("out of years")

    def quantity(self, lo: int, hi: int) -> str:
        while True:
            s = f"{self.rng.randint(lo, hi):,}"
            if s not in self.taken:
                self.taken.add(s)
                return s


def town(
    rng: random.Random, names: Names, nums: Numbers, feature: tuple[str, str]
) -> tuple[str, str, list[dict]]:
    name = names.word(2, rng.choice(TOWN_ENDS))
    founder, job = names.person(), rng.choice(JOBS)
    founded = nums.year(1120, 1700)
    census, pop = nums.year(1800, 1989), nums.quantity(1200, 95000)
    landmark, landmark_year = (
        f"{rng.choice(LANDMARK_KINDS)} {names.word(2)}",
        nums.year(founded + 20, 1900),
    )
    river, region = names.word(2), rng.choice(REGIONS)
    size = rng.choice(
        ["small market town", "harbour town", "hill town", "river town", "walled town"]
    )
    text = (
        f"# {name}\n\n"
        f"{name} is a {size} {'on' if 'Coast' in region else 'in'} {region}, on the banks of the {river} River. "
        f"It was founded in {founded} by {founder}, a {job} who {rng.choice(REASONS)}. "
        f"According to the census of {census}, {name} had {pop} inhabitants.\n\n"
        f"{name} is best known for {feature[0]}. "
        f"The local economy has long rested on {rng.choice(INDUSTRIES)}, and a weekly market "
        f"draws traders from across {region}. "
        f"Its oldest surviving building, {landmark}, was completed in {landmark_year} and now "
        f"houses a small museum of local history.\n"
    )
    qs = [
        {
            "question": rng.choice(
                [
                    f"In what year did settlers first put down roots at {name}?",
                    f"When did {name} come into being as a settlement?",
                ]
            ),
            "answer": str(founded),
            "kind": "named",
        },
        {
            "question": f"Who established the settlement that grew into {name}?",
            "answer": founder,
            "kind": "named",
        },
        {
            "question": rng.choice(
                [
                    f"How many people lived in {name} when it was last counted?",
                    f"What was the head count of {name}'s residents in its census?",
                ]
            ),
            "answer": pop,
            "kind": "named",
        },
        {
            "question": f"When was work on the most ancient structure still standing in {name} finished?",
            "answer": str(landmark_year),
            "kind": "named",
        },
        {
            "question": f"Which town is famous for {feature[1]}?",
            "answer": name,
            "kind": "described",
        },
        {
            "question": f"Which town had a population of {pop} when the census was taken?",
            "answer": name,
            "kind": "keyed",
        },
    ]
    return name, text, qs


def invention(
    rng: random.Random, names: Names, nums: Numbers, feature: tuple[str, str]
) -> tuple[str, str, list[dict]]:
    name = f"{names.word(2)} {INVENTION_NOUNS[INVENTION_FEATURES.index(feature)]}"
    inventor, year = names.person(), nums.year(1500, 1950)
    weight, made = nums.quantity(3, 900), nums.quantity(40, 20000)
    region = rng.choice(REGIONS)
    closed = nums.year(year + 5, 1989)
    text = (
        f"# The {name}\n\n"
        f"The {name} was {feature[0]}. It was invented in {year} by {inventor}, who worked in "
        f"a small workshop in {region}. "
        f"The earliest models weighed {weight} kilograms and had to be assembled by hand.\n\n"
        f"Demand grew slowly at first, but the workshop eventually turned out {made} of them "
        f"before it closed in {closed}. "
        f"Collectors still prize the surviving examples, and one is kept in working order at the "
        f"regional museum of crafts.\n"
    )
    qs = [
        {
            "question": rng.choice(
                [f"In what year did the {name} first appear?", f"When was the {name} devised?"]
            ),
            "answer": str(year),
            "kind": "named",
        },
        {"question": f"Who came up with the {name}?", "answer": inventor, "kind": "named"},
        {
            "question": f"How heavy were the first versions of the {name}?",
            "answer": f"{weight} kilograms",
            "kind": "named",
        },
        {
            "question": f"How many units of the {name} were produced in total?",
            "answer": made,
            "kind": "named",
        },
        {"question": f"What was the name of {feature[1]}?", "answer": name, "kind": "described"},
        {
            "question": f"Which device was turned out {made} times before its maker closed?",
            "answer": name,
            "kind": "keyed",
        },
    ]
    return name, text, qs


def person(
    rng: random.Random, names: Names, nums: Numbers, feature: tuple[str, str]
) -> tuple[str, str, list[dict]]:
    name = names.person()
    born = nums.year(1500, 1920)
    died = nums.year(born + 35, min(born + 95, 1989))
    he = rng.choice(["He", "She"])
    his = "His" if he == "He" else "Her"
    book = f"The {rng.choice(['Ledger', 'Almanac', 'Notebook', 'Account', 'Chronicle'])} of {names.word(2)}"
    book_year = nums.year(born + 20, died)
    region, job = rng.choice(REGIONS), rng.choice(PROFESSIONS)
    text = (
        f"# {name}\n\n"
        f"{name} ({born}–{died}) was a {job} from {region}. "
        f"{he} is remembered above all for {feature[0]}.\n\n"
        f"{his} book {book}, published in {book_year}, described that work in detail and was "
        f"read widely in its day. "
        f"{he} spent the last years of life in a small house near the sea, and {his.lower()} "
        f"letters are now held in the archive of {region}.\n"
    )
    qs = [
        {
            "question": rng.choice(
                [
                    f"In what year did {name} come into the world?",
                    f"What was the birth year of {name}?",
                ]
            ),
            "answer": str(born),
            "kind": "named",
        },
        {"question": f"When did {name} pass away?", "answer": str(died), "kind": "named"},
        {
            "question": f"What is the title of the volume in which {name} set out that work?",
            "answer": book,
            "kind": "named",
        },
        {"question": f"Who is known for {feature[1]}?", "answer": name, "kind": "described"},
        {"question": f"Who was the author of {book}?", "answer": name, "kind": "keyed"},
    ]
    return name, text, qs


def species(
    rng: random.Random, names: Names, nums: Numbers, feature: tuple[str, str]
) -> tuple[str, str, list[dict]]:
    cls = rng.choice(sorted(CLASSES))
    name = f"{rng.choice(['marbled', 'lesser', 'crested', 'pale', 'spotted', 'banded', 'golden'])} {names.word(2).lower()}"
    latin = f"{names.word(2)} {names.word(2).lower()}"
    described, naturalist = nums.year(1700, 1975), names.person()
    length = rng.randint(*CLASSES[cls])
    size = f"{length}.{rng.randint(1, 9)} centimetres"
    while size in nums.taken:
        size = f"{length}.{rng.randint(1, 9)} centimetres"
    nums.taken.add(size)
    habitat = rng.choice(HABITATS)
    text = (
        f"# {name.capitalize()}\n\n"
        f"The {name} ({latin}) is a species of {cls} found in {habitat}. "
        f"It was first described in {described} by the naturalist {naturalist}. "
        f"Adults reach an average length of {size}.\n\n"
        f"{feature[0]}. "
        f"The species {rng.choice(STATUS)}, and local people tell many stories about it.\n"
    )
    qs = [
        {
            "question": f"When did science first formally record the {name}?",
            "answer": str(described),
            "kind": "named",
        },
        {
            "question": f"Which naturalist gave the first scientific account of the {name}?",
            "answer": naturalist,
            "kind": "named",
        },
        {
            "question": f"How big does a grown {name} typically get?",
            "answer": size,
            "kind": "named",
        },
        {
            "question": f"What is the scientific name of the {name}?",
            "answer": latin,
            "kind": "named",
        },
        {"question": f"Which creature {feature[1]}?", "answer": name, "kind": "described"},
        {
            "question": f"Which animal do biologists call {latin}?",
            "answer": name,
            "kind": "keyed",
        },
    ]
    return name, text, qs


def build(seed: int) -> tuple[dict[str, str], list[dict]]:
    rng = random.Random(seed)
    names, nums = Names(rng), Numbers(rng)
    articles: dict[str, str] = {}
    questions: list[dict] = []
    for kind, make, features in [
        ("town", town, TOWN_FEATURES),
        ("invention", invention, INVENTION_FEATURES),
        ("person", person, PERSON_FEATURES),
        ("species", species, SPECIES_FEATURES),
    ]:
        for feature in features[:PER_KIND]:
            name, text, qs = make(rng, names, nums, feature)
            fname = f"{kind}-{name.lower().replace(' ', '-')}.md"
            articles[fname] = text
            # two of the named questions (a balance of the two kinds), the described one
            named = [q for q in qs if q["kind"] == "named"]
            picked = rng.sample(named, 2) + [q for q in qs if q["kind"] != "named"]
            for q in picked:
                questions.append({**q, "source": f"builtin/{fname}", "topic": kind})
    # the check the collection promises: each answer in exactly one article, not in its question
    lowered = {f: t.lower() for f, t in articles.items()}
    kept = []
    for q in questions:
        a = q["answer"].lower()
        holders = [f for f, t in lowered.items() if a in t]
        if holders == [q["source"].removeprefix("builtin/")] and a not in q["question"].lower():
            kept.append(q)
    rng.shuffle(kept)
    return articles, kept


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    articles, questions = build(args.seed)
    shutil.rmtree(args.out / "articles", ignore_errors=True)
    (args.out / "articles").mkdir(parents=True)
    for fname, text in sorted(articles.items()):
        (args.out / "articles" / fname).write_text(text, encoding="utf-8")
    with open(args.out / "questions.jsonl", "w", encoding="utf-8") as f:
        for q in questions:
            f.write(json.dumps(q, ensure_ascii=False) + "\n")
    kinds = {k: sum(q["kind"] == k for q in questions) for k in ("named", "described", "keyed")}
    (args.out / "PROVENANCE.md").write_text(
        "# The built-in retrieval collection\n\n"
        f"Generated by scripts/build_rag_collection.py (seed {args.seed}): {len(articles)} "
        f"invented encyclopedia articles (towns, inventions, people, species) and "
        f"{len(questions)} questions ({kinds['named']} naming the subject, {kinds['described']} "
        f"describing it in other words, {kinds['keyed']} giving an exact number, title or "
        "scientific name of it). Every name, date and number is made up, so no model "
        "was trained on these facts. Each answer appears verbatim (case-insensitively) in "
        "exactly one article. Released with twofiles under the MIT licence.\n",
        encoding="utf-8",
    )
    print(f"{len(articles)} articles, {len(questions)} questions ({kinds}) -> {args.out}")


if __name__ == "__main__":
    main()
